"""Clients of the emulator under test: tokens, connection strings, a raw protocol client."""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any

import boto3
import psycopg
from scramp import ScramClient

from emulator.errors import ReadinessTimeout
from emulator.rdsproxy.auth import md5_password
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend
from emulator.stack.embedded import EmbeddedStack
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.wait import wait_until


@dataclass
class ProxyUnderTest:
    stack: EmbeddedStack
    emulator: RdsProxyEmulator

    @property
    def host(self) -> str:
        return self.emulator.host

    @property
    def port(self) -> int:
        return self.emulator.port

    @property
    def user(self) -> str:
        return self.stack.config.db_user

    @property
    def database(self) -> str:
        return self.stack.config.database

    @property
    def ca(self) -> str:
        return str(self.stack.ca.ca_path)

    def token(self, user: str | None = None, host: str | None = None, port: int | None = None) -> str:
        aws = self.stack.aws
        rds = boto3.session.Session().client(
            "rds",
            region_name=aws.credentials.region,
            aws_access_key_id=aws.credentials.access_key_id,
            aws_secret_access_key=aws.credentials.secret_access_key,
        )
        return str(
            rds.generate_db_auth_token(
                DBHostname=host or self.host, Port=port or self.port, DBUsername=user or self.user
            )
        )

    def password(self, port: int | None = None) -> str:
        """What a client sends: a token when IAM is required (for the endpoint's port it connects
        to), else the secret's password."""
        if self.emulator.config.iam_auth == "REQUIRED":
            return self.token(port=port)
        return self.stack.db_password

    def conninfo(self, **extra: Any) -> dict[str, Any]:
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.database,
            "password": self.password(extra.get("port")),
            "sslmode": "require"
            if self.emulator.config.require_tls or self.emulator.config.iam_auth == "REQUIRED"
            else "disable",
            "connect_timeout": 10,
        }
        params.update(extra)
        return params

    def connect(self, **extra: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.conninfo(**extra), autocommit=True)

    def stats(self) -> dict[str, Any]:
        return self.emulator.stats()


class RawClient:
    """Hand-built protocol bytes on a socket: what drivers never send."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.frames = m.FrameReader()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_slowly(self, data: bytes) -> None:
        for byte in data:
            self.sock.sendall(bytes([byte]))

    def start_tls(self, ca: str) -> None:
        self.send(m.ssl_request())
        assert self.sock.recv(1) == b"S"
        context = ssl.create_default_context(cafile=ca)
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def read_frame(self) -> m.Frame:
        while True:
            for frame in self.frames.frames():
                return frame
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionResetError("closed by the proxy")
            self.frames.feed(data)

    def read_until(self, kind: int) -> list[m.Frame]:
        frames = []
        while True:
            frame = self.read_frame()
            frames.append(frame)
            if frame.kind == kind:
                return frames

    def kinds_until_ready(self) -> list[int]:
        """The kinds of message received up to and including the next ReadyForQuery."""
        return [frame.kind for frame in self.read_until(Backend.READY_FOR_QUERY)]

    def expect_error(self) -> dict[str, str]:
        frames = self.read_until(Backend.ERROR_RESPONSE)
        return m.parse_message_fields(frames[-1].body)

    def closed(self) -> bool:
        """Whether the proxy ended the connection (our socket is closed either way)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True
        finally:
            self.sock.close()

    def login_md5(self, user: str, password: str, database: str, **params: str) -> list[m.Frame]:
        self.send(m.startup_message({"user": user, "database": database, **params}))
        request = self.read_frame()
        assert request.kind == Backend.AUTHENTICATION, request.raw
        assert m.auth_code(request.body) == m.AUTH_MD5, request.raw
        self.send(m.password_message(md5_password(user, password, request.body[4:8])))
        return self.read_until(Backend.READY_FOR_QUERY)

    def login_scram(self, user: str, password: str, database: str) -> list[m.Frame]:
        """Logged in as drivers do when the proxy offers SCRAM-SHA-256 (its default)."""
        self.send(m.startup_message({"user": user, "database": database}))
        request = self.read_frame()
        assert m.auth_code(request.body) == m.AUTH_SASL, request.raw
        scram = ScramClient(["SCRAM-SHA-256"], user, password)
        self.send(m.sasl_initial_response("SCRAM-SHA-256", scram.get_client_first().encode()))
        scram.set_server_first(self.read_frame().body[4:].decode())
        self.send(m.sasl_response(scram.get_client_final().encode()))
        scram.set_server_final(self.read_frame().body[4:].decode())
        return self.read_until(Backend.READY_FOR_QUERY)

    def close(self) -> None:
        self.sock.close()


def startup_packet(code: int, payload: bytes = b"") -> bytes:
    body = struct.pack("!I", code) + payload
    return struct.pack("!I", len(body) + 4) + body


def wait_quiescent(proxy: RdsProxyEmulator, timeout: float = 10) -> dict[str, Any]:
    """Nothing borrowed, nothing in a transaction, no client left, the pool within its cap."""
    seen: dict[str, Any] = {}

    def quiet() -> bool:
        stats = seen["stats"] = proxy.stats()
        pool = stats["pool"]
        return bool(
            pool["borrowed"] == 0
            and stats["database_connections_in_transaction"] == 0
            and stats["client_connections"] == 0
            and stats["database_connections_pinned"] == 0
            and stats["borrow_waiters"] == 0
            and pool["total"] <= pool["cap"]
            and pool["total"] == pool["idle"]
        )

    try:
        wait_until(quiet, component="the proxy's pool (quiescent)", timeout=timeout)
    except ReadinessTimeout:
        raise AssertionError(f"the proxy is not quiescent: {seen.get('stats')}") from None
    return dict(seen["stats"])
