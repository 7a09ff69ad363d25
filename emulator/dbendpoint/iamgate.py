"""IAM database authentication at the database endpoint, as RDS for PostgreSQL does it.

On RDS a database user granted the `rds_iam` role logs in with an IAM token instead of a password,
and can no longer log in with a password; other users log in as PostgreSQL lets them. RDS checks the
token (through PAM, over TLS only); so does this gate, with the proxy's own validation
(emulator.rdsproxy.auth.verify_iam_token): signed for the endpoint the client dialled (host and
port), `DBUser` the startup user, not expired, this region, signed with the AWS credentials the
endpoint was given.

A user who passes is logged in to PostgreSQL without a password, through a path only the kit can
use: the server's unix socket in a directory of mode 0700 with `local all all trust`; over TCP,
pg_hba.conf rejects rds_iam users (`host all +rds_iam all reject`), so PostgreSQL itself refuses a
password login of such a user. prepare_server() sets a server up so.

Refusals, as RDS words them:
- a bad token (or a password) of an rds_iam user: `PAM authentication failed for user "<user>"`,
  SQLSTATE 28000 (PostgreSQL's auth.c, auth_failed(): uaPAM keeps ERRCODE_INVALID_AUTHORIZATION_
  SPECIFICATION; only password methods use 28P01). The text is RDS's, reported by its users
  (pgadmin4#2929, haines/pg-aws_rds_iam#639, cyrilgdn/terraform-provider-postgresql#289; with
  code 28000 in warp-tech/warpgate#1906).
- an rds_iam user without TLS: `pg_hba.conf rejects connection for host "<ip>", user "<user>",
  database "<db>", no encryption`, 28000 (auth.c's explicit-reject text; RDS's, as reported in
  haines/pg-aws_rds_iam#582).
- a token given for a user not in rds_iam: PostgreSQL's own `password authentication failed for user
  "<user>"` (28P01): the connection goes to PostgreSQL unchanged.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psycopg

from emulator.dbendpoint.gate import GateRefused, PassThroughGate
from emulator.dbendpoint.settings import EndpointSettings
from emulator.dbendpoint.startup import StartupPacket
from emulator.dbendpoint.streams import ClientStream, UpstreamStream
from emulator.dbendpoint.topology import Instance
from emulator.rdsproxy.auth import TokenRejected, environment_secret_key, verify_iam_token
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Frontend
from emulator.stack.process import ServiceUser, hand_over

IAM_ROLE = "rds_iam"
# Where each server's unix socket is (PostgreSQL names it .s.PGSQL.<port>), beside the topology file.
SOCKET_DIRECTORY = "pg-sockets"
# Role membership is asked of the database (a superuser connection through the socket) and remembered
# this long, so that a burst of logins does not double the connections: a GRANT or REVOKE of rds_iam
# takes effect for new logins within it (on RDS at once; the emulator's choice).
MEMBERSHIP_SECONDS = 1.0
_SUPERUSER = "postgres"
_INVALID_AUTHORIZATION = "28000"
_PROTOCOL_VIOLATION = "08P01"
PAM_FAILED = 'PAM authentication failed for user "{user}"'
HBA_REJECTS = (
    'pg_hba.conf rejects connection for host "{host}", user "{user}", database "{database}", {encryption}'
)

HBA_LINES = f"""\
# IAM database authentication (the local twin's database endpoint): users granted {IAM_ROLE} log in
# through the endpoint's IAM gate, which reaches this server by its unix socket, in a directory
# only the kit can enter (mode 0700); over TCP they are refused, as a password login on RDS is.
local all all trust
host all +{IAM_ROLE} all reject
"""


def socket_directory(settings: EndpointSettings) -> Path:
    return socket_directory_for(Path(settings.topology_file))


def socket_directory_for(topology_file: Path) -> Path:
    """The servers' socket directory: beside the topology file (the stack's working directory)."""
    return topology_file.parent / SOCKET_DIRECTORY


def make_gate(settings: EndpointSettings) -> IamGate:
    """The factory emulator.dbendpoint.gate.make_gate() calls."""
    return IamGate(settings, socket_directory(settings))


class IamGate:
    def __init__(self, settings: EndpointSettings, sockets: Path) -> None:
        self.settings = settings
        self.sockets = sockets
        self._pass = PassThroughGate()
        # (instance port, user) -> (member, when asked)
        self._members: dict[tuple[int, str], tuple[bool, float]] = {}

    async def connect(
        self, startup: StartupPacket, client: ClientStream, instance: Instance, upstream: UpstreamStream
    ) -> UpstreamStream:
        user = startup.user or ""
        if not user or not await self.uses_iam(instance, user):
            return await self._pass.connect(startup, client, instance, upstream)
        if not client.tls:
            host = client.peer.rpartition(":")[0]
            database = startup.database or user
            raise GateRefused(
                _INVALID_AUTHORIZATION,
                HBA_REJECTS.format(host=host, user=user, database=database, encryption="no encryption"),
            )
        # PAM asks for the password in clear (the token), over TLS.
        client.write(m.authentication(m.AUTH_CLEARTEXT))
        await client.drain()
        kind, body = await client.read_message()
        if kind != Frontend.PASSWORD:
            # PostgreSQL's words for anything but a PasswordMessage here (auth.c, recv_password_packet).
            raise GateRefused(_PROTOCOL_VIOLATION, f"expected password response, got message type {kind}")
        token = m.read_cstring(body)[0]
        try:
            verify_iam_token(
                token,
                user=user,
                endpoint_hosts=self.settings.endpoint_hosts,
                port=_dialled_port(client),
                region=self.settings.region,
                secret_for_key=environment_secret_key,
            )
        except TokenRejected:
            raise GateRefused(_INVALID_AUTHORIZATION, PAM_FAILED.format(user=user)) from None
        upstream.close()
        reader, writer = await asyncio.open_unix_connection(str(self._socket(instance)))
        writer.write(startup.raw)
        await writer.drain()
        return UpstreamStream(reader, writer, instance)

    def _socket(self, instance: Instance) -> Path:
        return self.sockets / f".s.PGSQL.{instance.port}"

    async def uses_iam(self, instance: Instance, user: str) -> bool:
        """Whether user is granted rds_iam on that instance (directly or through other roles)."""
        key = (instance.port, user)
        known = self._members.get(key)
        now = time.monotonic()
        if known is not None and now - known[1] < MEMBERSHIP_SECONDS:
            return known[0]
        member = await self._ask(instance, user)
        self._members[key] = (member, now)
        return member

    async def _ask(self, instance: Instance, user: str) -> bool:
        try:
            conn: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
                host=str(self.sockets),
                port=instance.port,
                user=_SUPERUSER,
                dbname="postgres",
                connect_timeout=int(self.settings.connect_timeout_seconds) or 1,
                application_name="local-twin-iam-gate",
                autocommit=True,
            )
        except psycopg.OperationalError:
            # Not reachable by its socket (not prepared, or down): PostgreSQL decides alone.
            return False
        async with conn:
            cursor = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_roles r, pg_roles g WHERE r.rolname = %s"
                " AND g.rolname = %s AND pg_has_role(r.oid, g.oid, 'MEMBER'))",
                (user, IAM_ROLE),
            )
            row = await cursor.fetchone()
        return bool(row and row[0])


def _dialled_port(client: ClientStream) -> int:
    """The endpoint's port the client connected to: the one its token must be signed for."""
    address = client.writer.get_extra_info("sockname")
    return int(address[1]) if isinstance(address, tuple) else 0


def prepare_server(datadir: Path, sockets: Path, *, owner: ServiceUser | None) -> list[str]:
    """Set a server up for the gate (before it starts): pg_hba.conf's lines first, and the socket
    directory (mode 0700, the server's user's). Returns the postgresql.conf lines to add
    (PostgresServer.append_settings)."""
    sockets.mkdir(mode=0o700, exist_ok=True)
    os.chmod(sockets, 0o700)
    hand_over(sockets, owner)
    hba = datadir / "pg_hba.conf"
    text = hba.read_text()
    if HBA_LINES not in text:
        hba.write_text(HBA_LINES + text)
    return [f"unix_socket_directories = '{sockets}'"]
