"""The proxy's counters and the connections right now, as typed values.

ProxyStats is the RDS Proxy emulator's own view (its /stats endpoint, the raw material of RDS
Proxy's CloudWatch metrics). Connections is the machine's view, the same whatever the proxy:
client connections in the kernel's socket table, database connections in pg_stat_activity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Latency:
    """Microseconds: how many samples, and their median, 99th percentile and maximum."""

    count: int
    p50_us: int
    p99_us: int
    max_us: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Latency:
        return cls(int(data["count"]), int(data["p50"]), int(data["p99"]), int(data["max"]))


@dataclass(frozen=True)
class ProxyStats:
    """The emulator's counters. Peaks are since the proxy started or since LocalTwin.reset_peaks()
    (the pytest plugin resets them when each test starts, so a test sees its own)."""

    # Now (CloudWatch: ClientConnections, DatabaseConnections, DatabaseConnectionsCurrentlyBorrowed,
    # DatabaseConnectionsCurrentlySessionPinned, DatabaseConnectionsCurrentlyInTransaction,
    # MaxDatabaseConnectionsAllowed).
    client_connections: int
    database_connections: int
    database_connections_borrowed: int
    pinned_sessions: int
    database_connections_in_transaction: int
    max_database_connections_allowed: int
    borrow_waiters: int
    # The highest values seen.
    peak_client_connections: int
    peak_database_connections: int
    peak_pinned_sessions: int
    # Counts since the proxy started.
    client_connections_received: int
    client_connections_setup_succeeded: int
    client_connections_setup_failed_auth: int
    client_connections_closed: int
    database_connections_setup_succeeded: int
    database_connections_setup_failed: int
    query_requests: int
    borrows: int
    # Borrows that waited connection_borrow_timeout and failed ("Timed-out waiting to acquire
    # database connection.").
    borrow_timeouts: int
    # Database connections lent in a state that was not clean: always 0 unless the proxy is broken.
    lent_out_of_sync: int
    borrow_latency: Latency
    # From a request's arrival (QueryResponseLatency) and from its forwarding
    # (QueryDatabaseResponseLatency) to the database's first answer.
    query_response_latency: Latency
    query_database_latency: Latency
    target_available: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProxyStats:
        """From the emulator's /stats answer."""
        counters = {
            name: int(data[name])
            for name in cls.__dataclass_fields__
            if name in data and not isinstance(data[name], Mapping | list | bool)
        }
        return cls(
            **counters,
            pinned_sessions=int(data["database_connections_pinned"]),
            borrow_latency=Latency.from_json(data["borrow_latency_us"]),
            query_response_latency=Latency.from_json(data["query_response_latency"]),
            query_database_latency=Latency.from_json(data["query_database_latency"]),
            target_available=bool(data["target_available"]),
        )


@dataclass(frozen=True)
class Connections:
    """Connections right now, counted the same way whatever the proxy."""

    # TCP connections established to the proxy (the kernel's socket table): Lambda environments,
    # frozen ones included, and any other client.
    client: int
    # Backends of the application's role in the application's database (pg_stat_activity): the
    # proxy's pool, and anything that reached PostgreSQL without it.
    database: int
    # The most database connections the proxy may open: MaxDatabaseConnectionsAllowed for the
    # emulator, the pool size for PgBouncer, None without a proxy.
    cap: int | None
