"""The pluggable proxy in front of PostgreSQL: the RDS Proxy emulator, PgBouncer, or none."""

from __future__ import annotations

import enum
from typing import Protocol


class ProxyKind(enum.StrEnum):
    EMULATOR = "emulator"
    PGBOUNCER = "pgbouncer"
    DIRECT = "direct"


class ProxyPart(Protocol):
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


class DirectProxy:
    """No proxy: clients connect to PostgreSQL itself, one backend per client (the problem)."""

    kind = "direct"
    handler_auth = "secret"

    def __init__(self, host: str, port: int, *, tls: bool) -> None:
        self.host = host
        self.port = port
        self._tls = tls

    @property
    def tls(self) -> bool:
        return self._tls

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def backend_pids(self) -> set[int]:
        """Clients' own connections belong to no proxy."""
        return set()
