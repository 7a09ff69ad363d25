"""Counting connections while a workload runs: the kernel's socket table and the sampler's cadence."""

from __future__ import annotations

import contextlib
import itertools
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator.tools import activity
from emulator.tools.activity import CLIENT_TABLE_SHARE, BackendSampler, established_connections

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the socket table is Linux's /proc/net/tcp")


@contextlib.contextmanager
def _connections(host: str, count: int) -> Iterator[int]:
    """`count` established connections to a listener on `host`; yields its port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as listener:
        listener.bind((host, 0))
        listener.listen(count)
        port = listener.getsockname()[1]
        with contextlib.ExitStack() as sockets:
            for _ in range(count):
                sockets.enter_context(socket.create_connection((host, port)))
                sockets.enter_context(listener.accept()[0])
            yield port


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.unit
def test_established_connections_to_an_ipv4_port_are_counted_with_or_without_its_address() -> None:
    with _connections("127.0.0.1", 7) as port:
        assert established_connections(port, "127.0.0.1") == 7
        assert established_connections(port) == 7
        # A name can be either family: both tables are read.
        assert established_connections(port, "localhost") == 7


@pytest.mark.unit
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_port_is_counted_in_the_ipv6_table() -> None:
    with _connections("::1", 4) as port:
        assert established_connections(port, "::1") == 4
        assert established_connections(port) == 4
        # The IPv4 table alone does not hold them: the address picks the table.
        assert established_connections(port, "127.0.0.1") == 0


@pytest.mark.unit
def test_a_connection_a_read_lists_twice_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel lists its table a page at a time; a connection that moves while it is read can be
    listed twice (two entries, the same two addresses). Listening sockets and other ports do not count."""
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt  uid  timeout inode"
    rest = "00000000:00000000 00:00000000 00000000  1000        0 {inode} 1"
    entries = [
        ("0100007F:1538", "00000000:0000", "0A"),  # the listener on port 5432
        ("0100007F:1538", "0100007F:D5E8", "01"),
        ("0100007F:1538", "0100007F:CE8E", "01"),
        ("0100007F:1538", "0100007F:D5E8", "01"),  # listed again by a read that raced a change
        ("0100007F:D5E8", "0100007F:1538", "01"),  # the client's end: not the port's
        ("0100007F:1539", "0100007F:AAAA", "01"),
    ]
    lines = [header] + [
        f"{n:4}: {local} {remote} {state} {rest.format(inode=1000 + n)}"
        for n, (local, remote, state) in enumerate(entries)
    ]
    table = tmp_path / "tcp"
    table.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(activity, "_TCP4", table)
    assert established_connections(5432, "127.0.0.1") == 2


class _Postgres:
    """What the sampler needs of a PostgreSQL endpoint: a connection it passes to count_backends."""

    @contextlib.contextmanager
    def admin_connection(self) -> Iterator[object]:
        yield object()


@pytest.mark.unit
def test_the_sampler_reads_the_socket_table_at_most_its_share_of_the_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read of the table costs milliseconds (more with hundreds of connections): read every 10 ms,
    it took a sixth of the demo's CPU. The backends are counted every period all the same, and the
    clients once more as sampling stops, so a burst's last clients are in the peak."""
    read_cost = 0.02
    reads: list[float] = []
    clients = iter(range(1, 1000))

    def slow_table(port: int, host: str | None = None) -> int:
        assert (port, host) == (5432, "127.0.0.1")
        reads.append(time.monotonic())
        started = time.thread_time()
        while time.thread_time() - started < read_cost:
            pass  # the kernel's work, on this thread's CPU time
        return next(clients)

    monkeypatch.setattr(activity, "established_connections", slow_table)
    monkeypatch.setattr(activity, "count_backends", lambda conn, **_: 3)
    postgres: Any = _Postgres()
    sampler = BackendSampler(postgres, user="app", period=0.005, client_port=5432, client_host="127.0.0.1")
    with sampler:
        stop = threading.Event()
        stop.wait(0.6)
    samples = sampler.samples
    # The table was read no more often than its share allows (plus the read at the start and the
    # one at the stop), while the backends were counted many times more.
    spacing = read_cost / CLIENT_TABLE_SHARE
    assert 2 <= len(reads) <= 0.6 / spacing + 3, reads
    assert all(later - earlier >= spacing * 0.9 for earlier, later in itertools.pairwise(reads[:-1])), reads
    assert len(samples.times) > 3 * len(reads)
    assert samples.counts[-1] == 3
    # Each client count has its own instant; the last one was read as sampling stopped.
    assert len(samples.client_times) == len(samples.clients) == len(reads)
    assert samples.clients == sorted(samples.clients)
    assert samples.peak_clients == len(reads)
    assert samples.client_times[-1] >= samples.times[-1]


@pytest.mark.unit
def test_without_a_proxy_port_the_clients_are_the_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_table(port: int, host: str | None = None) -> int:
        raise AssertionError("the socket table is not read when the clients are the backends")

    monkeypatch.setattr(activity, "established_connections", no_table)
    monkeypatch.setattr(activity, "count_backends", lambda conn, **_: 15)
    postgres: Any = _Postgres()
    with BackendSampler(postgres, user="app", period=0.005) as sampler:
        threading.Event().wait(0.05)
    samples = sampler.samples
    assert samples.clients == samples.counts
    assert samples.client_times == samples.times
    assert samples.peak_clients == samples.peak == 15
