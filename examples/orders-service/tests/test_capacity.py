"""A burst of cold starts: every execution environment opens its own connection and keeps it while
frozen, and RDS Proxy serves them all with the few database connections its cap allows."""

from __future__ import annotations

import pytest

from emulator.twin import LocalTwin

BURST = 40


@pytest.mark.usefixtures("twin_within_cap")  # the database never served more than the proxy's cap
def test_a_burst_of_cold_starts_shares_the_proxy_s_few_database_connections(twin: LocalTwin) -> None:
    burst = twin.invoke_burst("orders-api", BURST, {"action": "list"})
    assert burst.succeeded == BURST, burst.errors
    stats = twin.stats()
    # One client connection per environment, kept while it is frozen (nearly one environment per
    # invocation: on a loaded machine a few invocations find one that finished already).
    assert stats.peak_client_connections > stats.max_database_connections_allowed
    assert stats.peak_database_connections <= stats.max_database_connections_allowed
    assert stats.borrow_timeouts == 0
