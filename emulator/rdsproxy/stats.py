"""The proxy's counters, the raw material of RDS Proxy's CloudWatch metrics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    # current values
    client_connections: int = 0
    client_connections_tls: int = 0
    database_connections: int = 0
    database_connections_tls: int = 0
    database_connections_borrowed: int = 0
    database_connections_in_transaction: int = 0
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
    query_requests: int = 0
    query_requests_tls: int = 0
    # microseconds of every borrow, for latency percentiles
    borrow_latencies_us: list[int] = field(default_factory=list)
    # per request (Query, FunctionCall, Sync): from arrival to the first answer (QueryResponseLatency), and
    # from forwarding to the database's first answer (QueryDatabaseResponseLatency)
    query_response_latencies_us: list[int] = field(default_factory=list)
    query_database_latencies_us: list[int] = field(default_factory=list)
    peak_client_connections: int = 0
    peak_database_connections: int = 0
    peak_pinned_sessions: int = 0

    def note_peaks(self) -> None:
        self.peak_client_connections = max(self.peak_client_connections, self.client_connections)
        self.peak_database_connections = max(self.peak_database_connections, self.database_connections)
        self.peak_pinned_sessions = max(self.peak_pinned_sessions, self.database_connections_pinned)

    def snapshot(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("query_response_latencies_us")
        data.pop("query_database_latencies_us")
        latencies = sorted(data.pop("borrow_latencies_us"))
        data["borrow_latency_us"] = {
            "count": len(latencies),
            "p50": _percentile(latencies, 50),
            "p99": _percentile(latencies, 99),
            "max": latencies[-1] if latencies else 0,
        }
        return data


def _percentile(values: list[int], pct: int) -> int:
    if not values:
        return 0
    index = min(len(values) - 1, max(0, round(pct / 100 * len(values) + 0.5) - 1))
    return values[index]
