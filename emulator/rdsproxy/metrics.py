"""RDS Proxy's CloudWatch metrics (namespace AWS/RDS) and its log group, from the proxy's counters.

The metric list and dimension sets are the reference's section 4: DS1 ProxyName; DS2 ProxyName,
EndpointName; DS3 ProxyName, TargetGroup, Target; DS4 ProxyName, TargetGroup, TargetRole. Gauges are
the value at publication time; counts are what happened since the previous publication.
Latencies are the period's average in microseconds; a request is a Query, a FunctionCall or a Sync,
measured to the first bytes of its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.stats import Stats

log = logging.getLogger("emulator.rdsproxy.metrics")
NAMESPACE = "AWS/RDS"

# metric -> (stats field or computed key, unit, dimension sets, "gauge" | "count")
_PROXY = ("DS1", "DS2")
_TARGET = ("DS1", "DS3", "DS4")
METRICS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "ClientConnections": ("client_connections", "Count", _PROXY, "gauge"),
    "ClientConnectionsTLS": ("client_connections_tls", "Count", _PROXY, "gauge"),
    "ClientConnectionsNoTLS": ("client_connections_no_tls", "Count", _PROXY, "gauge"),
    "ClientConnectionsReceived": ("client_connections_received", "Count", _PROXY, "count"),
    "ClientConnectionsSetupSucceeded": ("client_connections_setup_succeeded", "Count", _PROXY, "count"),
    "ClientConnectionsSetupFailedAuth": ("client_connections_setup_failed_auth", "Count", _PROXY, "count"),
    "ClientConnectionsClosed": ("client_connections_closed", "Count", _PROXY, "count"),
    "QueryRequests": ("query_requests", "Count", _PROXY, "count"),
    "QueryRequestsTLS": ("query_requests_tls", "Count", _PROXY, "count"),
    "QueryRequestsNoTLS": ("query_requests_no_tls", "Count", _PROXY, "count"),
    "DatabaseConnections": ("database_connections", "Count", _TARGET, "gauge"),
    "DatabaseConnectionsWithTLS": ("database_connections_with_tls", "Count", _TARGET, "gauge"),
    "DatabaseConnectionsCurrentlyBorrowed": ("database_connections_borrowed", "Count", _TARGET, "gauge"),
    "DatabaseConnectionsCurrentlyInTransaction": (
        "database_connections_in_transaction",
        "Count",
        _TARGET,
        "gauge",
    ),
    "DatabaseConnectionsCurrentlySessionPinned": ("database_connections_pinned", "Count", _TARGET, "gauge"),
    "MaxDatabaseConnectionsAllowed": ("max_database_connections_allowed", "Count", _TARGET, "gauge"),
    "DatabaseConnectionRequests": ("database_connection_requests", "Count", _TARGET, "count"),
    "DatabaseConnectionRequestsWithTLS": ("database_connection_requests_tls", "Count", _TARGET, "count"),
    "DatabaseConnectionsSetupSucceeded": ("database_connections_setup_succeeded", "Count", _TARGET, "count"),
    "DatabaseConnectionsSetupFailed": ("database_connections_setup_failed", "Count", _TARGET, "count"),
    "AvailabilityPercentage": ("availability_percentage", "Percent", ("DS4",), "gauge"),
}


class MetricsPublisher:
    """Publishes the proxy's snapshot to CloudWatch as RDS Proxy's metrics, and its log lines to
    CloudWatch Logs, every metrics_period_seconds."""

    def __init__(
        self,
        config: ProxyConfig,
        snapshot: Callable[[], dict[str, Any]],
        stats: Stats,
        availability: Callable[[], float],
    ) -> None:
        self.config = config
        self._snapshot = snapshot
        self._stats = stats
        # The share of the period the target was available, in percent (AvailabilityPercentage).
        self._availability = availability
        self._previous: dict[str, float] = {}
        self._seen: dict[str, tuple[int, int]] = {}  # metric -> (count, total) published
        self._log_lines: list[tuple[int, str]] = []
        self._log_stream = ""

    def dimension_sets(self) -> dict[str, list[dict[str, str]]]:
        proxy = {"Name": "ProxyName", "Value": self.config.name}
        group = {"Name": "TargetGroup", "Value": "default"}
        return {
            "DS1": [proxy],
            "DS2": [proxy, {"Name": "EndpointName", "Value": "default"}],
            "DS3": [proxy, group, {"Name": "Target", "Value": self.config.target_name}],
            "DS4": [proxy, group, {"Name": "TargetRole", "Value": "READ_WRITE"}],
        }

    def values(self) -> dict[str, float]:
        """Every metric's value now (counts as totals since the proxy started)."""
        snapshot = self._snapshot()
        snapshot["client_connections_no_tls"] = (
            snapshot["client_connections"] - snapshot["client_connections_tls"]
        )
        snapshot["query_requests_no_tls"] = snapshot["query_requests"] - snapshot["query_requests_tls"]
        available = snapshot["target_ready"] and snapshot.get("target_available", True)
        snapshot["availability_percentage"] = 100.0 if available else 0.0
        return {metric: float(snapshot[field]) for metric, (field, *_rest) in METRICS.items()}

    def metric_data(self, now: datetime.datetime) -> list[dict[str, Any]]:
        """One publication: gauges as they are, counts since the previous publication."""
        current = self.values()
        current["AvailabilityPercentage"] = self._availability()
        sets = self.dimension_sets()
        data: list[dict[str, Any]] = []
        for metric, (_, unit, dimension_sets, kind) in METRICS.items():
            value = current[metric]
            if kind == "count":
                value, self._previous[metric] = value - self._previous.get(metric, 0.0), value
            for name in dimension_sets:
                data.append(
                    {
                        "MetricName": metric,
                        "Dimensions": sets[name],
                        "Timestamp": now,
                        "Value": value,
                        "Unit": unit,
                    }
                )
        stats = self._stats
        for metric, latencies, dimension_sets in (
            ("DatabaseConnectionsBorrowLatency", stats.borrow_latency, _PROXY),
            ("QueryResponseLatency", stats.query_response_latency, _PROXY),
            ("QueryDatabaseResponseLatency", stats.query_database_latency, ("DS1", "DS2", "DS3", "DS4")),
        ):
            # The period's average: what was added since the previous publication.
            seen_count, seen_total = self._seen.get(metric, (0, 0))
            self._seen[metric] = (latencies.count, latencies.total_us)
            if latencies.count == seen_count:
                continue
            average = (latencies.total_us - seen_total) / (latencies.count - seen_count)
            for name in dimension_sets:
                data.append(
                    {
                        "MetricName": metric,
                        "Dimensions": sets[name],
                        "Timestamp": now,
                        "Value": average,
                        "Unit": "Microseconds",
                    }
                )
        return data

    def log_sink(self, line: str) -> None:
        self._log_lines.append((int(datetime.datetime.now(datetime.UTC).timestamp() * 1000), line))

    async def run(self) -> None:
        """Publish every metrics_period_seconds until cancelled; a failure is logged, never fatal."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.metrics_period_seconds)
            now = datetime.datetime.now(datetime.UTC)
            data = self.metric_data(now)
            lines, self._log_lines = self._log_lines, []
            try:
                await loop.run_in_executor(None, self._publish, data, lines)
            except Exception as exc:  # noqa: BLE001 - the AWS endpoint may be gone; the proxy goes on
                log.warning("could not publish metrics or logs: %s", exc)

    def _client(self, service: str) -> Any:
        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.config.aws_endpoint_url or None,
            region_name=self.config.region,
            # moto's server cannot read botocore's gzipped PutMetricData; AWS does not need it gzipped.
            config=Config(disable_request_compression=True),
        )

    def _publish(self, data: list[dict[str, Any]], lines: list[tuple[int, str]]) -> None:
        cloudwatch = self._client("cloudwatch")
        for start in range(0, len(data), 500):
            cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=data[start : start + 500])
        if lines:
            self._publish_log(lines)

    def _publish_log(self, lines: list[tuple[int, str]]) -> None:
        logs = self._client("logs")
        group = f"/aws/rds/proxy/{self.config.name}"
        if not self._log_stream:
            self._log_stream = f"{self.config.name}-{datetime.datetime.now(datetime.UTC):%Y-%m-%d-%H%M%S}"
            with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
                logs.create_log_group(logGroupName=group)
            logs.create_log_stream(logGroupName=group, logStreamName=self._log_stream)
        logs.put_log_events(
            logGroupName=group,
            logStreamName=self._log_stream,
            logEvents=[{"timestamp": ts, "message": message} for ts, message in lines],
        )
