"""RDS Proxy's CloudWatch metrics: exact under known workloads, read back with the same boto3 calls a
user runs against AWS; and the proxy's log group."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from emulator.wait import wait_until

from .helpers import ProxyUnderTest

pytestmark = pytest.mark.integration


@pytest.fixture
def publishing(make_proxy: Callable[..., ProxyUnderTest]) -> ProxyUnderTest:
    return make_proxy(name="metrics-proxy", metrics_period_seconds=1, max_connections_percent=10)


def _maximum(proxy: ProxyUnderTest, metric: str, dimensions: list[dict[str, str]]) -> float | None:
    cloudwatch = proxy.stack.aws.client("cloudwatch")
    now = datetime.datetime.now(datetime.UTC)
    answer = cloudwatch.get_metric_statistics(
        Namespace="AWS/RDS",
        MetricName=metric,
        Dimensions=dimensions,
        StartTime=now - datetime.timedelta(minutes=5),
        EndTime=now + datetime.timedelta(minutes=1),
        Period=60,
        Statistics=["Maximum", "Sum"],
    )
    points = answer["Datapoints"]
    return max(p["Maximum"] for p in points) if points else None


def test_pinned_sessions_and_connections_are_published_exactly(publishing: ProxyUnderTest) -> None:
    ds1 = [{"Name": "ProxyName", "Value": "metrics-proxy"}]
    ds3 = [*ds1, {"Name": "TargetGroup", "Value": "default"}, {"Name": "Target", "Value": "local-twin-db"}]
    pinned = [publishing.connect() for _ in range(2)]
    plain = publishing.connect()
    try:
        for conn in pinned:
            conn.execute("SET work_mem = '8MB'")
        plain.execute("SELECT 1")
        local: dict[str, Any] = publishing.emulator.metrics()["values"]
        assert local["DatabaseConnectionsCurrentlySessionPinned"] == 2
        assert local["ClientConnections"] == 3
        assert local["MaxDatabaseConnectionsAllowed"] == 3
        assert local["DatabaseConnectionsCurrentlyBorrowed"] == 2  # the pinned ones keep theirs
        wait_until(
            lambda: _maximum(publishing, "DatabaseConnectionsCurrentlySessionPinned", ds3) == 2,
            component="DatabaseConnectionsCurrentlySessionPinned in CloudWatch",
            timeout=20,
        )
        assert _maximum(publishing, "ClientConnections", ds1) == 3
        assert _maximum(publishing, "MaxDatabaseConnectionsAllowed", ds1) == 3
    finally:
        for conn in [*pinned, plain]:
            conn.close()
    wait_until(
        lambda: publishing.emulator.metrics()["values"]["DatabaseConnectionsCurrentlySessionPinned"] == 0,
        component="pinned sessions ending",
        timeout=10,
    )


def test_every_metric_is_published_with_its_dimension_sets(publishing: ProxyUnderTest) -> None:
    with publishing.connect() as conn:
        conn.execute("SELECT 1")
    cloudwatch = publishing.stack.aws.client("cloudwatch")

    def published() -> set[tuple[str, tuple[str, ...]]]:
        pages = cloudwatch.get_paginator("list_metrics").paginate(Namespace="AWS/RDS")
        return {
            (m["MetricName"], tuple(sorted(d["Name"] for d in m["Dimensions"])))
            for page in pages
            for m in page["Metrics"]
            if {"Name": "ProxyName", "Value": "metrics-proxy"} in m["Dimensions"]
        }

    wanted = {
        ("ClientConnections", ("ProxyName",)),
        ("ClientConnections", ("EndpointName", "ProxyName")),
        ("DatabaseConnections", ("ProxyName",)),
        ("DatabaseConnections", ("ProxyName", "Target", "TargetGroup")),
        ("DatabaseConnections", ("ProxyName", "TargetGroup", "TargetRole")),
        ("DatabaseConnectionsBorrowLatency", ("ProxyName",)),
        ("DatabaseConnectionsCurrentlySessionPinned", ("ProxyName", "Target", "TargetGroup")),
        ("AvailabilityPercentage", ("ProxyName", "TargetGroup", "TargetRole")),
        ("QueryRequests", ("EndpointName", "ProxyName")),
        ("QueryResponseLatency", ("EndpointName", "ProxyName")),
        ("QueryDatabaseResponseLatency", ("ProxyName", "TargetGroup", "TargetRole")),
    }
    wait_until(lambda: wanted <= published(), component="metrics in CloudWatch", timeout=60)


def test_the_log_goes_to_the_proxys_log_group(publishing: ProxyUnderTest) -> None:
    with publishing.connect() as conn:
        conn.execute("SET search_path TO app")
    logs = publishing.stack.aws.client("logs")

    def pin_logged() -> bool:
        events = logs.filter_log_events(logGroupName="/aws/rds/proxy/metrics-proxy")["events"]
        return any("The client session was pinned" in event["message"] for event in events)

    wait_until(pin_logged, component="the pin in CloudWatch Logs", timeout=20)


def test_query_latencies_measure_the_database_and_the_whole_answer(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    proxy = make_proxy(name="query-latency-proxy", metrics_period_seconds=1)
    with proxy.connect() as conn:
        conn.execute("SELECT pg_sleep(0.3)")
    ds1 = [{"Name": "ProxyName", "Value": "query-latency-proxy"}]
    ds3 = [*ds1, {"Name": "TargetGroup", "Value": "default"}, {"Name": "Target", "Value": "local-twin-db"}]
    for metric, dimensions in (("QueryDatabaseResponseLatency", ds3), ("QueryResponseLatency", ds1)):
        wait_until(
            lambda m=metric, d=dimensions: (_maximum(proxy, m, d) or 0) >= 0.3e6 / 2,
            component=f"{metric} in CloudWatch",
            timeout=20,
        )


def test_query_response_latency_counts_a_requests_wait_for_a_database_connection(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    # "Between getting a query request and the proxy responding": a request that waits in line for
    # the only database connection waits in it; the database's own latency does not.
    proxy = make_proxy(name="latency-wait-proxy", max_connections_percent=4)  # 1 of 30: one connection
    with proxy.connect() as holder, proxy.connect() as waiting:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")  # the transaction keeps the only connection
        answered: list[Any] = []
        request = threading.Thread(target=lambda: answered.append(waiting.execute("SELECT 2").fetchone()))
        request.start()
        try:
            wait_until(
                lambda: proxy.stats()["borrow_waiters"] == 1, component="the waiting request", timeout=10
            )
            started = time.monotonic()
            # The holder's think time inside its transaction: what the waiting request waits for.
            time.sleep(0.3)
            holder.execute("COMMIT")
        finally:
            request.join(10)
        held = time.monotonic() - started
    assert answered == [(2,)]
    stats = proxy.stats()
    assert stats["query_response_latency"]["max"] >= held * 1e6 * 0.9
    assert stats["query_database_latency"]["max"] < 0.3e6
