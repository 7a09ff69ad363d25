"""The database endpoint's settings: one dataclass, from a JSON file (as the proxy's)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.dbendpoint.routing import BALANCING, Balancing

# Aurora's DNS zones use a 5-second TTL: "Currently, Aurora DNS zones use a short Time-To-Live (TTL)
# of five seconds" (Amazon Aurora MySQL Database Administrator's Handbook, "DNS caching",
# https://docs.aws.amazon.com/whitepapers/latest/amazon-aurora-mysql-db-admin-handbook/dns-caching.html;
# the same figure in the re:Post article "aurora-mysql-redirected-endpoint-writer"). RDS Multi-AZ's
# failover "changes the DNS record of the DB instance to point to the standby" (Concepts.MultiAZ.Failover)
# and publishes no other figure, so the same default serves both kinds.
DEFAULT_DNS_TTL_SECONDS = 5.0


@dataclass
class EndpointSettings:
    # The topology file the cluster writes (the design's section 1); read, never written, here.
    topology_file: str = ""
    # How long a topology change takes to reach new connections: the DNS record's TTL.
    dns_ttl_seconds: float = DEFAULT_DNS_TTL_SECONDS
    # How often the file is stat()ed in the background (it is also stat()ed on every new connection).
    poll_interval_seconds: float = 0.2
    # How the reader endpoint spreads new connections over the replicas: in turn, or at random as
    # AWS's DNS answers do.
    reader_balancing: Balancing = "round-robin"
    listen_host: str = "127.0.0.1"
    # 0 picks a free port; the ready file says which.
    writer_port: int = 0
    reader_port: int = 0
    # Ports of instance endpoints by instance name; instances not named here get a free port.
    instance_ports: dict[str, int] = field(default_factory=dict)
    # The stack's certificate: with both, SSLRequest is answered 'S' and TLS ends here.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # The client must send its startup packet (and finish TLS) within this many seconds
    # (PostgreSQL's authentication_timeout default).
    startup_timeout_seconds: float = 60.0
    # A routed instance that does not accept TCP within this long counts as down.
    connect_timeout_seconds: float = 5.0
    # IAM database authentication (aws_db_instance/aws_rds_cluster iam_database_authentication_enabled):
    # the connections pass through the IAM gate (iamgate.py) instead of straight to PostgreSQL.
    iam_database_authentication: bool = False
    # For the IAM gate: where tokens are validated, and the host names a token may be signed for.
    region: str = "us-east-1"
    aws_endpoint_url: str = ""
    endpoint_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost"])

    def __post_init__(self) -> None:
        problems = []
        if not self.topology_file:
            problems.append("topology_file is required")
        if self.dns_ttl_seconds < 0:
            problems.append("dns_ttl_seconds must be 0 or more")
        if self.poll_interval_seconds <= 0:
            problems.append("poll_interval_seconds must be more than 0")
        if self.reader_balancing not in BALANCING:
            problems.append(f"reader_balancing is round-robin or random, not {self.reader_balancing!r}")
        if self.startup_timeout_seconds <= 0 or self.connect_timeout_seconds <= 0:
            problems.append("startup_timeout_seconds and connect_timeout_seconds must be more than 0")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append("tls_cert_file and tls_key_file go together")
        ports = [self.writer_port, self.reader_port, *self.instance_ports.values()]
        if any(not 0 <= port <= 65535 for port in ports):
            problems.append("ports must be between 0 and 65535")
        if problems:
            raise ValueError("invalid database endpoint settings: " + "; ".join(problems))

    @property
    def tls_available(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)

    @classmethod
    def from_file(cls, path: Path) -> EndpointSettings:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")  # noqa: TRY004 - a bad file, as the rest
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> EndpointSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown database endpoint settings: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)
