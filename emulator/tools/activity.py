"""Watching pg_stat_activity while a workload runs: how many backends the application really used."""

from __future__ import annotations

import ipaddress
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
    # Client connections to the proxy (empty when not sampled), at their own instants: the socket
    # table is read less often than the backends are counted (see BackendSampler).
    clients: list[int] = field(default_factory=list)
    client_times: list[float] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(self.counts, default=0)

    @property
    def peak_clients(self) -> int:
        return max(self.clients, default=0)


_TCP4 = Path("/proc/net/tcp")
_TCP6 = Path("/proc/net/tcp6")
_ESTABLISHED = "01"


def _tables(host: str | None) -> tuple[Path, ...]:
    """The socket tables a listener on `host` can have clients in: an IPv4 address's are in the
    IPv4 table only; an IPv6 address (or "::", which takes IPv4 clients as mapped addresses) and
    a name, in both."""
    try:
        address = ipaddress.ip_address(host) if host is not None else None
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv4Address):
        return (_TCP4,)
    return (_TCP4, _TCP6)


def established_connections(port: int, host: str | None = None) -> int | None:
    """TCP connections established to a local port (on `host`, when given: only the tables that
    address can be in are read), from the kernel's socket table (Linux); None where there is no
    /proc/net/tcp. It counts every client alike, whatever the proxy.

    Read directly rather than with psutil.net_connections, which also finds each socket's process
    by scanning every process's file descriptors: with the demo's hundreds of environments that
    costs many times the table itself, every sample. Even so a read walks the kernel's whole
    connection hash table (milliseconds, even for an empty table), hence `host`.
    """
    if not _TCP4.exists():
        return None
    wanted = f":{port:04X}"
    # A read is not a snapshot: the kernel lists the table a page at a time, and a connection can
    # be listed twice while it changes under the read (the demo showed 502 clients for 500
    # invocations). Each connection counts once, by its two addresses.
    connections: set[tuple[str, str]] = set()
    for table in _tables(host):
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; a listening socket is state 0A, not 01.
            if fields[1].endswith(wanted) and fields[3] == _ESTABLISHED:
                connections.add((fields[1], fields[2]))
    return len(connections)


# The socket table costs milliseconds of CPU a read, more with the demo's hundreds of connections
# (12 ms for 600 here, mostly in the kernel): the sampler spends at most this share of its time
# reading it, so it leaves the CPUs to the workload it watches (read every 10 ms, it took a sixth
# of the demo's CPU). Clients connect over seconds and stay: the peak is not missed.
CLIENT_TABLE_SHARE = 0.1


class BackendSampler:
    """Samples the role's client backends on a fixed period from a background thread, and the
    clients of a proxy's port as often as CLIENT_TABLE_SHARE allows.

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
        client_host: str | None = None,
    ) -> None:
        self.postgres = postgres
        self.user = user
        # None: the role's backends in every database.
        self.database = database
        # Backends to leave out: other proxies' idle pooled connections.
        self.exclude = list(exclude)
        self.period = period
        # The proxy's port (and address), whose established connections are the clients; None:
        # the backends are.
        self.client_port = client_port
        self.client_host = client_host
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

    def _read_clients(self, port: int, at: float) -> None:
        """One sample of the proxy's clients from the kernel's socket table (none if unreadable)."""
        clients = established_connections(port, self.client_host)
        if clients is not None:
            self.samples.client_times.append(at)
            self.samples.clients.append(clients)

    def _run(self) -> None:
        samples, port = self.samples, self.client_port
        try:
            with self.postgres.admin_connection() as conn:
                started = samples.origin = time.monotonic()
                self._ready.set()
                read_clients_at = started
                while True:
                    count = count_backends(
                        conn, user=self.user, database=self.database, exclude_pids=self.exclude
                    )
                    now = time.monotonic()
                    samples.times.append(now - started)
                    samples.counts.append(count)
                    if port is None:
                        samples.client_times.append(now - started)
                        samples.clients.append(count)
                    elif now >= read_clients_at:
                        # Its cost in this thread's CPU time: on a busy machine a read also waits
                        # for a CPU, which would space the reads out for nothing.
                        cpu = time.thread_time()
                        self._read_clients(port, now - started)
                        took = time.thread_time() - cpu
                        read_clients_at = now + max(self.period, took / CLIENT_TABLE_SHARE)
                    if self._stop.wait(self.period):
                        break
                if port is not None:
                    # The burst's last clients may have come after the last read: one more.
                    self._read_clients(port, time.monotonic() - started)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._error = exc
            self._ready.set()
