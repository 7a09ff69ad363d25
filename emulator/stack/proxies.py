"""The pluggable proxy in front of PostgreSQL: the RDS Proxy emulator, PgBouncer, or none."""

from __future__ import annotations

import enum
from typing import Protocol


class ProxyKind(enum.StrEnum):
    EMULATOR = "emulator"
    PGBOUNCER = "pgbouncer"
    DIRECT = "direct"


class ProxyComponent(Protocol):
    """What the stack needs from a proxy: where it listens and how the handler logs in to it."""

    @property
    def kind(self) -> str: ...

    @property
    def handler_auth(self) -> str:
        """ "iam": the handler sends an IAM auth token; "secret": the password from Secrets Manager."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def tls(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def backend_pids(self) -> set[int]:
        """PostgreSQL backend PIDs of the database connections this proxy holds right now."""
        ...


class RemoteProxy:
    """A proxy the stack does not run (a container, or none at all): its address and how to log in."""

    def __init__(self, kind: str, host: str, port: int, *, handler_auth: str, tls: bool) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.handler_auth = handler_auth
        self._tls = tls

    @property
    def tls(self) -> bool:
        return self._tls

    def start(self) -> None:
        """Started elsewhere (by Docker Compose), or nothing to start."""

    def stop(self) -> None:
        """Stopped elsewhere, or nothing to stop."""

    def backend_pids(self) -> set[int]:
        """Database connections of proxies the stack does not run are not counted as the proxy's."""
        return set()


class DirectProxy(RemoteProxy):
    """No proxy: clients connect to PostgreSQL itself, one backend per client (the problem)."""

    def __init__(self, host: str, port: int, *, tls: bool) -> None:
        super().__init__(ProxyKind.DIRECT, host, port, handler_auth="secret", tls=tls)
