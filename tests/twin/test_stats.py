"""The emulator's /stats as a typed value."""

from __future__ import annotations

import json

import pytest

from emulator.rdsproxy.stats import Stats
from emulator.twin.stats import Latency, ProxyStats

pytestmark = pytest.mark.unit


def test_stats_come_typed_from_what_the_emulator_serves() -> None:
    stats = Stats(max_database_connections_allowed=5, borrow_timeouts=2, query_requests=40)
    for _ in range(3):
        stats.client_opened(tls=True)
    stats.database_connections = 4
    stats.pin_started()
    for us in (100, 200, 9000):
        stats.borrow_latency.add(us)
    # What /stats answers: the counters and what the listener adds about its pool and target.
    served = json.loads(
        json.dumps(
            {
                **stats.snapshot(),
                "database_connections_in_transaction": 1,
                "pool": {"cap": 5},
                "backend_pids": [11, 12],
                "target_available": True,
            }
        )
    )
    typed = ProxyStats.from_json(served)
    assert (typed.client_connections, typed.database_connections, typed.pinned_sessions) == (3, 4, 1)
    peaks = (typed.peak_client_connections, typed.peak_database_connections, typed.peak_pinned_sessions)
    assert peaks == (3, 4, 1)
    assert (typed.max_database_connections_allowed, typed.borrow_timeouts, typed.query_requests) == (5, 2, 40)
    assert typed.database_connections_in_transaction == 1
    assert typed.borrow_latency == Latency(count=3, p50_us=200, p99_us=9000, max_us=9000)
    assert typed.query_response_latency == Latency(0, 0, 0, 0)
    assert typed.target_available is True
