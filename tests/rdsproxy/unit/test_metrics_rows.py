"""The metrics' dimension sets: the whole proxy (DS1), each endpoint (DS2), each instance (DS3) and
each target role (DS4), with counts published as differences per dimension set."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.metrics import MetricsPublisher, TargetPart
from emulator.rdsproxy.stats import Latencies, Stats

pytestmark = pytest.mark.unit


def _figures(connections: int, requests: int) -> dict[str, float]:
    figures = dict.fromkeys(
        (
            "database_connections_with_tls",
            "database_connections_borrowed",
            "database_connections_in_transaction",
            "database_connections_pinned",
            "max_database_connections_allowed",
            "database_connection_requests_tls",
            "database_connections_setup_succeeded",
            "database_connections_setup_failed",
        ),
        0.0,
    )
    figures["database_connections"] = connections
    figures["database_connection_requests"] = requests
    return figures


class FakeProxy:
    def __init__(self) -> None:
        self.default, self.reads = Stats(), Stats()
        self.default.client_connections, self.reads.client_connections = 1, 2
        self.default.query_requests, self.reads.query_requests = 5, 7
        self.reads.query_database_latency.add(100)

    def snapshot(self) -> dict[str, Any]:
        data = Stats.total([self.default, self.reads]).snapshot()
        data.update(
            database_connections=4,
            database_connections_in_transaction=0,
            database_connections_with_tls=0,
            target_ready=True,
            target_available=True,
        )
        return data

    def endpoint_parts(self) -> list[tuple[str, Stats]]:
        return [("default", self.default), ("reads", self.reads)]

    def target_parts(self) -> list[TargetPart]:
        return [
            TargetPart("db-instance-1", "READ_WRITE", _figures(2, 3), Latencies()),
            TargetPart("db-instance-2", "READ_ONLY", _figures(1, 1), self.reads.query_database_latency),
            TargetPart("db-instance-3", "READ_ONLY", _figures(1, 2), self.reads.query_database_latency),
        ]

    def availability_percentage(self, role: str) -> float:
        return 100.0 if role == "READ_WRITE" else 50.0

    def available(self, role: str) -> float:
        return 100.0


def _by_dimensions(data: list[dict[str, Any]], metric: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(d["Value"] for d in datum["Dimensions"][1:]): datum["Value"]
        for datum in data
        if datum["MetricName"] == metric
    }


def test_each_endpoint_instance_and_role_has_its_own_values() -> None:
    publisher = MetricsPublisher(ProxyConfig(name="p"), FakeProxy())
    data = publisher.metric_data(datetime.datetime.now(datetime.UTC))
    assert _by_dimensions(data, "ClientConnections") == {(): 3.0, ("default",): 1.0, ("reads",): 2.0}
    assert _by_dimensions(data, "DatabaseConnections") == {
        (): 4.0,
        ("default", "db-instance-1"): 2.0,
        ("default", "READ_WRITE"): 2.0,
        ("default", "db-instance-2"): 1.0,
        ("default", "db-instance-3"): 1.0,
        ("default", "READ_ONLY"): 2.0,
    }
    assert _by_dimensions(data, "AvailabilityPercentage") == {
        ("default", "READ_WRITE"): 100.0,
        ("default", "READ_ONLY"): 50.0,
    }
    # Measured per endpoint: per role, and per instance only where one instance has the role.
    assert _by_dimensions(data, "QueryDatabaseResponseLatency") == {
        (): 100.0,
        ("reads",): 100.0,
        ("default", "READ_ONLY"): 100.0,
    }


def test_counts_are_differences_per_dimension_set() -> None:
    proxy = FakeProxy()
    publisher = MetricsPublisher(ProxyConfig(name="p"), proxy)
    publisher.metric_data(datetime.datetime.now(datetime.UTC))
    proxy.reads.query_requests += 4
    data = publisher.metric_data(datetime.datetime.now(datetime.UTC))
    assert _by_dimensions(data, "QueryRequests") == {(): 4.0, ("default",): 0.0, ("reads",): 4.0}


class WithoutReadableReplica(FakeProxy):
    """A READ_ONLY endpoint whose target has no readable replica (yet): no instance has the role."""

    def target_parts(self) -> list[TargetPart]:
        return [
            TargetPart("db-instance-1", "READ_WRITE", _figures(2, 3), Latencies()),
            TargetPart(None, "READ_ONLY", _figures(0, 0), self.reads.query_database_latency),
        ]


def test_a_role_without_an_instance_is_reported_per_role_and_never_with_an_empty_target() -> None:
    publisher = MetricsPublisher(ProxyConfig(name="p"), WithoutReadableReplica())
    data = publisher.metric_data(datetime.datetime.now(datetime.UTC))
    # CloudWatch refuses an empty dimension value (and with it the whole PutMetricData call).
    assert all(dimension["Value"] for datum in data for dimension in datum["Dimensions"])
    assert _by_dimensions(data, "DatabaseConnections") == {
        (): 4.0,
        ("default", "db-instance-1"): 2.0,
        ("default", "READ_WRITE"): 2.0,
        ("default", "READ_ONLY"): 0.0,
    }
    assert _by_dimensions(data, "AvailabilityPercentage") == {
        ("default", "READ_WRITE"): 100.0,
        ("default", "READ_ONLY"): 50.0,
    }
