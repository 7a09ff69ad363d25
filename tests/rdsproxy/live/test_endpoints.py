"""Proxy endpoints (aws_db_proxy_endpoint) in front of a single instance: a READ_WRITE endpoint is the
writer's too, with its own name in logs and metrics; a READ_ONLY one has no reader to go to, and its
requests fail with an error at once, as AWS documents for a target without reader instances."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from emulator.rdsproxy import texts
from emulator.wait import wait_until

from .helpers import ProxyUnderTest

pytestmark = pytest.mark.integration


@pytest.fixture
def with_endpoints(make_proxy: Callable[..., ProxyUnderTest]) -> ProxyUnderTest:
    return make_proxy(
        name="endpoints-proxy",
        proxy_endpoints=["writes=READ_WRITE:0", "reads=READ_ONLY:0"],
        connection_borrow_timeout=5,
    )


def _port(proxy: ProxyUnderTest, endpoint: str) -> int:
    return int(proxy.emulator.endpoints()[endpoint]["port"])


def test_a_read_write_endpoint_shares_the_writers_pool_and_has_its_own_figures(
    with_endpoints: ProxyUnderTest,
) -> None:
    proxy = with_endpoints
    with proxy.connect() as default, proxy.connect(port=_port(proxy, "writes")) as writes:
        backend = default.execute("SELECT pg_backend_pid()").fetchone()
        # One pooled connection serves both endpoints' transactions, one after the other.
        assert writes.execute("SELECT pg_backend_pid()").fetchone() == backend
        endpoints = proxy.stats()["endpoints"]
        assert endpoints["default"]["client_connections"] == 1
        assert endpoints["writes"] == {
            "port": _port(proxy, "writes"),
            "role": "READ_WRITE",
            "client_connections": 1,
        }
        rows = proxy.emulator.metrics()["rows"]
        per_endpoint = {
            r["dimensions"].get("EndpointName"): r["values"]["QueryRequests"]
            for r in rows
            if "EndpointName" in r["dimensions"]
        }
        assert per_endpoint == {"default": 1.0, "writes": 1.0, "reads": 0.0}
    wait_until(
        lambda: "[writes] [clientConnection=" in proxy.emulator.log_path.read_text(),
        component="the endpoint's log line",
        timeout=10,
    )


def test_a_read_only_endpoint_without_reader_instances_fails_its_requests_at_once(
    with_endpoints: ProxyUnderTest,
) -> None:
    proxy = with_endpoints
    with (
        proxy.connect(port=_port(proxy, "reads")) as reads,
        pytest.raises(psycopg.OperationalError) as failed,
    ):
        reads.execute("SELECT 1")
    assert "This read-only proxy endpoint's target has no reader DB instances." in str(failed.value)
    assert failed.value.sqlstate == "08000"


@pytest.mark.parametrize("endpoint", ["writes", "reads"])
def test_an_iam_token_is_for_the_endpoint_it_was_made_for(
    make_proxy: Callable[..., ProxyUnderTest], endpoint: str
) -> None:
    proxy = make_proxy(
        name="iam-endpoints-proxy",
        proxy_endpoints=["writes=READ_WRITE:0", "reads=READ_ONLY:0"],
        iam_auth="REQUIRED",
        require_tls=True,
    )
    port = _port(proxy, endpoint)
    # A token made for this endpoint's own host and port logs in there ...
    with proxy.connect(port=port, password=proxy.token(port=port)) as conn:
        assert conn.info.port == port
    refused = texts.IAM_FAILED.format(user=proxy.user)
    # ... and a token made for another endpoint's port is refused, both ways.
    with pytest.raises(psycopg.OperationalError) as other_token:
        proxy.connect(port=port, password=proxy.token(port=proxy.port)).close()
    assert refused in str(other_token.value)
    with pytest.raises(psycopg.OperationalError) as on_the_default:
        proxy.connect(password=proxy.token(port=port)).close()
    assert refused in str(on_the_default.value)


def test_metrics_and_logs_are_published_with_a_read_only_endpoint(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    proxy = make_proxy(
        name="published-endpoints-proxy",
        proxy_endpoints=["reads=READ_ONLY:0"],
        metrics_period_seconds=1,
    )
    with proxy.connect(port=_port(proxy, "reads")) as reads:
        with pytest.raises(psycopg.OperationalError):
            reads.execute("SELECT 1")  # no reader instance: fails, and is counted
        rows = proxy.emulator.metrics()["rows"]
    # The READ_ONLY role has no instance: it is reported per role, never with an empty Target.
    assert {"TargetGroup": "default", "TargetRole": "READ_ONLY"} in [
        {k: v for k, v in r["dimensions"].items() if k != "ProxyName"} for r in rows
    ]
    assert all(value for r in rows for value in r["dimensions"].values())
    cloudwatch = proxy.stack.aws.client("cloudwatch")
    logs = proxy.stack.aws.client("logs")

    def published() -> bool:
        # Every PutMetricData of a period is one call: the READ_ONLY role's metric is only there
        # when the whole call was accepted.
        metrics = cloudwatch.list_metrics(
            Namespace="AWS/RDS",
            MetricName="AvailabilityPercentage",
            Dimensions=[
                {"Name": "ProxyName", "Value": "published-endpoints-proxy"},
                {"Name": "TargetRole", "Value": "READ_ONLY"},
            ],
        )["Metrics"]
        return bool(metrics)

    wait_until(published, component="the READ_ONLY role's metrics in CloudWatch", timeout=30)

    def logged() -> bool:
        group = "/aws/rds/proxy/published-endpoints-proxy"
        try:
            events = logs.filter_log_events(logGroupName=group)["events"]
        except logs.exceptions.ResourceNotFoundException:
            return False
        return any("[reads] [clientConnection=" in event["message"] for event in events)

    wait_until(logged, component="the read-only endpoint's log lines in CloudWatch Logs", timeout=30)
