"""The options where RDS Proxy's behaviour is open, each pinning (or not) as documented."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from emulator.rdsproxy.protocol.pinning import REASON_PARSE
from emulator.wait import wait_until

from .helpers import ProxyUnderTest

pytestmark = pytest.mark.integration


def test_by_default_set_local_pins_and_the_exemption_lifts_it(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    for exempt, pinned in ((False, 1), (True, 0)):
        proxy = make_proxy(exempt_set_local=exempt)
        with proxy.connect() as conn:
            conn.execute("BEGIN")
            conn.execute("SET LOCAL statement_timeout = 1000")
            assert proxy.stats()["database_connections_pinned"] == pinned
            conn.execute("COMMIT")


def test_protocol_prepared_statements_multiplex_by_default(proxy: ProxyUnderTest) -> None:
    with psycopg.connect(**proxy.conninfo(), prepare_threshold=0, autocommit=True) as conn:
        for i in range(3):
            conn.execute("SELECT %s::int", (i,))
        assert proxy.stats()["database_connections_pinned"] == 0


@pytest.mark.parametrize("setting", ["legacy_eqp_pinning", "pin_named_statements"])
def test_the_pessimistic_options_pin_on_parse(
    make_proxy: Callable[..., ProxyUnderTest], setting: str
) -> None:
    proxy = make_proxy(**{setting: True})
    with psycopg.connect(**proxy.conninfo(), prepare_threshold=0, autocommit=True) as conn:
        conn.execute("SELECT %s::int", (1,))
        assert proxy.stats()["database_connections_pinned"] == 1
    assert any(
        line.endswith(f"Reason: {REASON_PARSE}") for line in proxy.emulator.log_path.read_text().splitlines()
    )


def test_unnamed_statements_pin_only_under_the_legacy_rule(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    named_only = make_proxy(pin_named_statements=True)
    with psycopg.connect(**named_only.conninfo(), prepare_threshold=None, autocommit=True) as conn:
        conn.execute("SELECT %s::int", (1,))  # psycopg sends an unnamed Parse
        assert named_only.stats()["database_connections_pinned"] == 0


def test_session_pinning_filters_are_accepted_and_ignored_for_postgresql(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    proxy = make_proxy(session_pinning_filters=["EXCLUDE_VARIABLE_SETS"])
    with proxy.connect() as conn:
        conn.execute("SET search_path TO app")
        assert proxy.stats()["database_connections_pinned"] == 1


def test_borrow_latency_is_what_the_clients_waited(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    # One pooled connection: the second client waits while the first holds a transaction for 0.6 s.
    proxy = make_proxy(max_connections_percent=4, name="latency-proxy", metrics_period_seconds=1)
    with proxy.connect() as holder, proxy.connect() as waiter:
        before = proxy.stats()["borrow_latency_us"]["count"]
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        timer = threading.Timer(0.6, holder.execute, args=("COMMIT",))
        started = time.monotonic()
        timer.start()
        waiter.execute("SELECT 1")
        waited = time.monotonic() - started
        timer.join()
    latency = proxy.stats()["borrow_latency_us"]
    assert latency["count"] == before + 2
    assert 0.5e6 <= latency["max"] <= waited * 1e6 + 50_000
    cloudwatch = proxy.stack.aws.client("cloudwatch")

    def published_maximum() -> float:
        now = time.time()
        points = cloudwatch.get_metric_statistics(
            Namespace="AWS/RDS",
            MetricName="DatabaseConnectionsBorrowLatency",
            Dimensions=[{"Name": "ProxyName", "Value": "latency-proxy"}],
            StartTime=now - 300,
            EndTime=now + 60,
            Period=60,
            Statistics=["Maximum"],
        )["Datapoints"]
        return max((p["Maximum"] for p in points), default=0.0)

    # Published as the average of a period's borrows: at least half the long wait.
    wait_until(
        lambda: published_maximum() >= 0.25e6, component="DatabaseConnectionsBorrowLatency", timeout=20
    )
