"""The proxy's counters, the raw material of RDS Proxy's CloudWatch metrics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Final

# Percentiles are over this many of the most recent samples: memory stays bounded however long the
# proxy runs, while count, sum and max cover every sample since it started.
RECENT_SAMPLES: Final = 65536


@dataclass
class Latencies:
    """Microsecond samples of one kind (borrow waits, query latencies)."""

    count: int = 0
    total_us: int = 0
    max_us: int = 0
    # The last RECENT_SAMPLES samples, as a ring: sample n (from 1) is at (n - 1) % RECENT_SAMPLES.
    # A list, not a deque with maxlen, whose append is a generic call from compiled code (three per
    # request).
    recent: list[int] = field(default_factory=list)

    def add(self, us: int) -> None:
        self.count += 1
        self.total_us += us
        self.max_us = max(self.max_us, us)
        recent = self.recent
        if len(recent) < RECENT_SAMPLES:
            recent.append(us)
        else:
            recent[(self.count - 1) % RECENT_SAMPLES] = us  # in place of the oldest

    @classmethod
    def merged(cls, parts: list[Latencies]) -> Latencies:
        merged = cls()
        for part in parts:
            merged.count += part.count
            merged.total_us += part.total_us
            merged.max_us = max(merged.max_us, part.max_us)
            merged.recent.extend(part.recent)
        # The parts' recent samples, as many as one ring keeps (percentiles ignore their order).
        del merged.recent[:-RECENT_SAMPLES]
        return merged

    def summary(self) -> dict[str, int]:
        ordered = sorted(self.recent)
        return {
            "count": self.count,
            "p50": _percentile(ordered, 50),
            "p99": _percentile(ordered, 99),
            "max": self.max_us,
        }


@dataclass
class Stats:
    # current values
    client_connections: int = 0
    client_connections_tls: int = 0
    database_connections: int = 0
    database_connections_borrowed: int = 0
    database_connections_pinned: int = 0
    borrow_waiters: int = 0
    max_database_connections_allowed: int = 0
    # counts since start
    client_connections_received: int = 0
    client_connections_setup_succeeded: int = 0
    client_connections_setup_failed_auth: int = 0
    client_connections_closed: int = 0
    database_connection_requests: int = 0
    database_connection_requests_tls: int = 0
    database_connections_setup_succeeded: int = 0
    database_connections_setup_failed: int = 0
    borrow_timeouts: int = 0
    borrows: int = 0
    # Database connections lent while not idle and in sync: must stay 0 (a broken invariant).
    lent_out_of_sync: int = 0
    query_requests: int = 0
    query_requests_tls: int = 0
    # how long each borrow waited
    borrow_latency: Latencies = field(default_factory=Latencies)
    # per request (Query, FunctionCall, Sync): from arrival to the first answer (QueryResponseLatency), and
    # from forwarding to the database's first answer (QueryDatabaseResponseLatency)
    query_response_latency: Latencies = field(default_factory=Latencies)
    query_database_latency: Latencies = field(default_factory=Latencies)
    peak_client_connections: int = 0
    peak_database_connections: int = 0
    peak_pinned_sessions: int = 0

    # Paired changes of the current values, so that every increment has its decrement in one place.

    def client_opened(self, *, tls: bool) -> None:
        self.client_connections_setup_succeeded += 1
        self.client_connections += 1
        if tls:
            self.client_connections_tls += 1
        self.note_peaks()

    def client_closed(self, *, tls: bool) -> None:
        self.client_connections -= 1
        self.client_connections_closed += 1
        if tls:
            self.client_connections_tls -= 1

    def pin_started(self) -> None:
        self.database_connections_pinned += 1
        self.note_peaks()

    def pin_ended(self) -> None:
        self.database_connections_pinned -= 1

    def query_received(self, *, tls: bool) -> None:
        self.query_requests += 1
        if tls:
            self.query_requests_tls += 1

    def note_peaks(self) -> None:
        self.peak_client_connections = max(self.peak_client_connections, self.client_connections)
        self.peak_database_connections = max(self.peak_database_connections, self.database_connections)
        self.peak_pinned_sessions = max(self.peak_pinned_sessions, self.database_connections_pinned)

    def reset_peaks(self) -> None:
        """A new window for the peaks (a test's own): they start again from the current values."""
        self.peak_client_connections = self.client_connections
        self.peak_database_connections = self.database_connections
        self.peak_pinned_sessions = self.database_connections_pinned

    @classmethod
    def total(cls, parts: list[Stats]) -> Stats:
        """The sum of several counters (the proxy's endpoints and pools); one part is itself. A peak is
        the sum of the parts' peaks, an upper bound of the whole's."""
        if len(parts) == 1:
            return parts[0]
        whole = cls()
        for item in dataclasses.fields(cls):
            values = [getattr(part, item.name) for part in parts]
            if isinstance(values[0], Latencies):
                setattr(whole, item.name, Latencies.merged(values))
            else:
                setattr(whole, item.name, sum(values))
        return whole

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            data[item.name] = value.summary() if isinstance(value, Latencies) else value
        # The name /stats readers (the demo, the report) know it by.
        data["borrow_latency_us"] = data.pop("borrow_latency")
        return data


def _percentile(values: list[int], pct: int) -> int:
    if not values:
        return 0
    index = min(len(values) - 1, max(0, round(pct / 100 * len(values) + 0.5) - 1))
    return values[index]


class RequestLatency:
    """QueryResponseLatency and QueryDatabaseResponseLatency of the request being answered: from its
    arrival (and from its forwarding to the database) to the database's first bytes."""

    __slots__ = ("_forwarded", "_received", "_stats")

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._received: float | None = None
        self._forwarded: float | None = None

    def request_arrived(self, now: float) -> None:
        if self._received is None:
            self._received = now

    def request_forwarded(self) -> None:
        if self._received is not None and self._forwarded is None:
            self._forwarded = monotonic()

    def first_answer(self, now: float) -> None:
        forwarded = self._forwarded
        if forwarded is None:
            return
        self._stats.query_database_latency.add(int((now - forwarded) * 1e6))
        if self._received is not None:
            self._stats.query_response_latency.add(int((now - self._received) * 1e6))
        self._received = None
        self._forwarded = None
