"""Watching pg_stat_activity while a workload runs: how many backends the application really used."""

from __future__ import annotations

import threading
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from emulator.stack.postgres import PostgresEndpoint, count_backends


@dataclass
class ConnectionSamples:
    """A time series of backend counts for one role, in seconds since sampling started."""

    times: list[float] = field(default_factory=list)
    # time.monotonic() when sampling started: the zero of `times`.
    origin: float = 0.0
    counts: list[int] = field(default_factory=list)
    # Client connections to the proxy at the same instants (empty when not sampled).
    clients: list[int] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(self.counts, default=0)

    @property
    def peak_clients(self) -> int:
        return max(self.clients, default=0)


_TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_ESTABLISHED = "01"


def established_connections(port: int) -> int | None:
    """TCP connections established to a local port, from the kernel's socket table (Linux); None
    where there is no /proc/net/tcp. It counts every client alike, whatever the proxy.

    Read directly rather than with psutil.net_connections, which also finds each socket's process
    by scanning every process's file descriptors: with the demo's hundreds of environments that
    costs many times the table itself, every sample.
    """
    if not _TCP_TABLES[0].exists():
        return None
    wanted = f":{port:04X}"
    count = 0
    for table in _TCP_TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; a listening socket is state 0A, not 01.
            if fields[1].endswith(wanted) and fields[3] == _ESTABLISHED:
                count += 1
    return count


class BackendSampler:
    """Samples the role's client backends on a fixed period from a background thread.

    It holds one superuser connection for the whole run, opened before the workload starts, so a
    full server (the very thing being shown) cannot lock it out.
    """

    def __init__(
        self,
        postgres: PostgresEndpoint,
        *,
        user: str,
        database: str | None = None,
        period: float = 0.01,
        exclude: AbstractSet[int] = frozenset(),
        client_port: int | None = None,
    ) -> None:
        self.postgres = postgres
        self.user = user
        # None: the role's backends in every database.
        self.database = database
        # Backends to leave out: other proxies' idle pooled connections.
        self.exclude = list(exclude)
        self.period = period
        # The proxy's port, whose established connections are the clients; None: the backends are.
        self.client_port = client_port
        self.samples = ConnectionSamples()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="backend-sampler", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._error is not None and exc is None:
            raise self._error

    def _run(self) -> None:
        try:
            with self.postgres.admin_connection() as conn:
                started = self.samples.origin = time.monotonic()
                self._ready.set()
                while True:
                    count = count_backends(
                        conn, user=self.user, database=self.database, exclude_pids=self.exclude
                    )
                    clients = count if self.client_port is None else established_connections(self.client_port)
                    self.samples.times.append(time.monotonic() - started)
                    self.samples.counts.append(count)
                    if clients is not None:
                        self.samples.clients.append(clients)
                    if self._stop.wait(self.period):
                        break
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._error = exc
            self._ready.set()
