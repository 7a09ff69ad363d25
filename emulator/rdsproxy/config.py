"""The emulator's configuration: one typed object with the Terraform argument names.

Where the reference says RDS Proxy's behaviour is unknown, the setting is an option here and its
default says which way we lean (see README, "RDS Proxy emulator options").
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

IamAuth = Literal["REQUIRED", "DISABLED"]
TargetRole = Literal["READ_WRITE", "READ_ONLY"]
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


@dataclass(frozen=True)
class Instance:
    """One PostgreSQL server of the target (an RDS instance, or an Aurora cluster's instance)."""

    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, entry: str) -> Instance:
        name, sep, address = entry.partition("=")
        host, colon, port = address.rpartition(":")
        if not (sep and colon and _NAME.fullmatch(name) and host and port.isdigit()):
            raise ValueError(f"target_instances: expected NAME=HOST:PORT, not {entry!r}")
        return cls(name, host, int(port))


@dataclass(frozen=True)
class Endpoint:
    """A proxy endpoint (aws_db_proxy_endpoint): its name, target role and local port."""

    name: str
    role: TargetRole
    port: int

    @classmethod
    def parse(cls, entry: str) -> Endpoint:
        name, sep, rest = entry.partition("=")
        role, colon, port = rest.partition(":")
        if not (sep and colon and _NAME.fullmatch(name) and port.isdigit()):
            raise ValueError(f"proxy_endpoints: expected NAME=ROLE:PORT, not {entry!r}")
        if role not in typing.get_args(TargetRole):
            raise ValueError(f"proxy_endpoints: the role is READ_WRITE or READ_ONLY, not {role!r}")
        return cls(name, role, int(port))  # type: ignore[arg-type]


PasswordAuth = Literal["POSTGRES_SCRAM_SHA_256", "POSTGRES_MD5"]


@dataclass
class ProxyConfig:
    # -- aws_db_proxy -------------------------------------------------------------------------
    name: str = "local-twin-proxy"
    require_tls: bool = False
    iam_auth: IamAuth = "DISABLED"
    client_password_auth_type: PasswordAuth = "POSTGRES_SCRAM_SHA_256"
    idle_client_timeout: int = 1800
    debug_logging: bool = False
    # The Secrets Manager secret with the database credentials ({"username", "password"}).
    secret_arn: str = ""
    # -- aws_db_proxy_default_target_group.connection_pool_config -----------------------------
    connection_borrow_timeout: int = 120
    max_connections_percent: int = 100
    # Unset means half of max_connections_percent, as AWS documents (80 -> 40).
    max_idle_connections_percent: int | None = None
    init_query: str = ""
    # Accepted and, as in AWS, without effect for PostgreSQL.
    session_pinning_filters: list[str] = field(default_factory=list)
    # -- where things are ----------------------------------------------------------------------
    listen_host: str = "127.0.0.1"
    listen_port: int = 5432
    # Names clients may put in an IAM token's host (the proxy endpoint's DNS name, locally these).
    endpoint_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost"])
    target_host: str = "127.0.0.1"
    target_port: int = 5432
    aws_endpoint_url: str = ""
    region: str = "us-east-1"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # HTTP endpoint (/stats, /metrics, /sessions, /config); 0 picks a free port, -1 turns it off.
    stats_port: int = 0
    # The target's identifier in the Target dimension (the RDS instance identifier in AWS).
    target_name: str = "local-twin-db"
    # A replicated target: NAME=HOST:PORT per instance (writer and replicas, in any order). Empty:
    # the single target above. The proxy learns each one's role itself (pg_is_in_recovery()).
    target_instances: list[str] = field(default_factory=list)
    # Extra proxy endpoints (aws_db_proxy_endpoint): NAME=ROLE:PORT, ROLE READ_WRITE or READ_ONLY,
    # PORT 0 for a free one. The default endpoint stays at listen_host:listen_port.
    proxy_endpoints: list[str] = field(default_factory=list)
    # CloudWatch metrics (AWS/RDS) and the log group /aws/rds/proxy/<name>, sent to aws_endpoint_url.
    publish_to_cloudwatch: bool = True
    metrics_period_seconds: int = 60
    # -- behaviour the reference leaves open -------------------------------------------------------
    # Connections RDS Proxy keeps for monitoring, not counted in MaxDatabaseConnectionsAllowed.
    reserved_connections: int = 0
    # A borrow timeout ends the client connection (FATAL, as re:Post describes) or only the query.
    borrow_timeout_severity: Literal["FATAL", "ERROR"] = "FATAL"
    # Idle pooled connections beyond max_idle_connections_percent are closed after this long.
    idle_connection_seconds: int = 300
    # The startup phase (startup packet, TLS, authentication) must end within this many seconds:
    # PostgreSQL's authentication_timeout is 60 s; AWS documents nothing for RDS Proxy.
    client_login_timeout: int = 60
    # RDS Proxy ends a client connection after 24 hours ("This value is not configurable"); a
    # setting here only so tests can shorten it. The client is closed between requests.
    max_client_connection_lifetime: int = 86400
    # Largest message a client may send (PostgreSQL's own limit by default).
    max_message_bytes: int = 0x3FFFFFFF
    # SET LOCAL, SET TRANSACTION, set_config(..., true): AWS documents no exemption for PostgreSQL.
    exempt_set_local: bool = False
    # Before November 2023 any extended-protocol Parse pinned ("A parse message was detected.").
    legacy_eqp_pinning: bool = False
    # The pessimistic third-party view: named protocol-level prepared statements pin.
    pin_named_statements: bool = False
    # A client whose transaction or request was on a database connection that was lost (failover,
    # restart) gets an 08006 error: ERROR keeps its client connection (its next transaction runs on
    # the new writer), FATAL closes it. AWS says only that such connections are "canceled".
    failover_error_severity: Literal["ERROR", "FATAL"] = "ERROR"
    # While the writer is unknown, every instance is asked for its role this often (milliseconds).
    failover_probe_interval_ms: int = 100

    def __post_init__(self) -> None:
        if self.max_idle_connections_percent is None:
            self.max_idle_connections_percent = self.max_connections_percent // 2
        self.validate()

    def validate(self) -> None:
        problems = []
        if not 1 <= self.max_connections_percent <= 100:
            problems.append("max_connections_percent must be between 1 and 100")
        idle = self.max_idle_connections_percent
        if idle is None or not 0 <= idle <= self.max_connections_percent:
            problems.append("max_idle_connections_percent must be between 0 and max_connections_percent")
        if not 0 <= self.connection_borrow_timeout <= 3600:
            problems.append("connection_borrow_timeout must be between 0 and 3600 seconds")
        if self.iam_auth not in typing.get_args(IamAuth):
            problems.append(f"iam_auth must be REQUIRED or DISABLED, not {self.iam_auth!r}")
        if self.client_password_auth_type not in typing.get_args(PasswordAuth):
            problems.append(
                f"client_password_auth_type {self.client_password_auth_type!r} is not for PostgreSQL"
            )
        for value in self.session_pinning_filters:
            if value != "EXCLUDE_VARIABLE_SETS":
                problems.append(f"session_pinning_filters: only EXCLUDE_VARIABLE_SETS exists, not {value!r}")
        if self.idle_client_timeout < 1:
            problems.append("idle_client_timeout must be at least 1 second")
        if self.client_login_timeout < 1 or self.max_client_connection_lifetime < 1:
            problems.append(
                "client_login_timeout and max_client_connection_lifetime must be at least 1 second"
            )
        if self.failover_error_severity not in ("ERROR", "FATAL"):
            problems.append("failover_error_severity must be ERROR or FATAL")
        if not 10 <= self.failover_probe_interval_ms <= 10_000:
            problems.append("failover_probe_interval_ms must be between 10 and 10000")
        try:
            self.instances()
            self.endpoints()
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("invalid proxy configuration: " + "; ".join(problems))

    def instances(self) -> list[Instance]:
        """The target's instances: target_instances, or the single target."""
        if not self.target_instances:
            return [Instance(self.target_name, self.target_host, self.target_port)]
        instances = [Instance.parse(entry) for entry in self.target_instances]
        names = [instance.name for instance in instances]
        if len(set(names)) != len(names):
            raise ValueError("target_instances: every instance needs its own name")
        return instances

    def endpoints(self) -> list[Endpoint]:
        """Every proxy endpoint, the default one first."""
        endpoints = [Endpoint("default", "READ_WRITE", self.listen_port)]
        endpoints += [Endpoint.parse(entry) for entry in self.proxy_endpoints]
        names = [endpoint.name for endpoint in endpoints]
        if len(set(names)) != len(names):
            raise ValueError("proxy_endpoints: every endpoint needs its own name (default is taken)")
        return endpoints

    @property
    def borrow_timeout(self) -> float | None:
        """connection_borrow_timeout in seconds; None for 0, which the API documents as no limit."""
        return float(self.connection_borrow_timeout) or None

    @property
    def tls_available(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)

    def pool_cap(self, target_max_connections: int) -> int:
        """MaxDatabaseConnectionsAllowed: floor(max_connections x percent / 100) - reserved."""
        return max(
            0, target_max_connections * self.max_connections_percent // 100 - self.reserved_connections
        )

    def idle_keep(self, target_max_connections: int) -> int:
        return target_max_connections * (self.max_idle_connections_percent or 0) // 100

    # -- files and overrides ---------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: Path) -> ProxyConfig:
        text = path.read_text()
        data: dict[str, Any] = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ProxyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown proxy settings: {', '.join(unknown)}")
        return cls(**data)

    def with_overrides(self, assignments: list[str]) -> ProxyConfig:
        """Apply NAME=VALUE strings (from the command line), converted to each field's type."""
        return ProxyConfig.from_mapping({**dataclasses.asdict(self), **parse_settings(assignments)})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def parse_settings(assignments: list[str]) -> dict[str, Any]:
    """NAME=VALUE strings to typed settings, checked against the known names."""
    types = {f.name: str(f.type) for f in dataclasses.fields(ProxyConfig)}
    settings: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, raw = assignment.partition("=")
        if not sep or name not in types:
            raise ValueError(f"not a proxy setting: {assignment!r}")
        settings[name] = _convert(types[name], raw)
    return settings


def _convert(type_name: str, raw: str) -> Any:
    if type_name == "bool":
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, not {raw!r}")
        return raw.lower() in ("true", "1")
    if type_name.startswith("int"):
        return None if raw.lower() in ("", "none", "null") else int(raw)
    if type_name.startswith("list"):
        return [item for item in raw.split(",") if item]
    return raw
