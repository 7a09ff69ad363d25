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
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.config import Config

from emulator.rdsproxy.aws import aws_client
from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.stats import Latencies, Stats

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


_LATENCIES = {
    "DatabaseConnectionsBorrowLatency": ("borrow_latency", _PROXY),
    "QueryResponseLatency": ("query_response_latency", _PROXY),
    "QueryDatabaseResponseLatency": ("query_database_latency", ("DS1", "DS2", "DS3", "DS4")),
}


@dataclass
class Row:
    """One dimension set's values: DS1 the whole proxy, DS2 an endpoint, DS3 an instance, DS4 a role."""

    kind: str
    dimensions: list[dict[str, str]]
    values: dict[str, float]
    latencies: dict[str, Latencies] = field(default_factory=dict)


@dataclass
class TargetPart:
    """A pool's side of the metrics: the instance it connects to, its role, its figures (the
    target-side fields of METRICS) and the query latencies of the endpoints that use it."""

    # None for a role no instance has now (a READ_ONLY endpoint without a readable replica): the
    # role is still reported (DS4), but there is no instance to name (DS3), and CloudWatch refuses
    # an empty dimension value.
    instance: str | None
    role: str
    figures: dict[str, float]
    query_database_latency: Latencies


class Observed(Protocol):
    """What the metrics are made of (the proxy's listener)."""

    def snapshot(self) -> dict[str, Any]: ...

    def endpoint_parts(self) -> list[tuple[str, Stats]]: ...

    def target_parts(self) -> list[TargetPart]: ...

    def availability_percentage(self, role: str) -> float: ...

    def available(self, role: str) -> float: ...


def _client_side(figures: dict[str, Any]) -> None:
    figures["client_connections_no_tls"] = figures["client_connections"] - figures["client_connections_tls"]
    figures["query_requests_no_tls"] = figures["query_requests"] - figures["query_requests_tls"]


def _target_side(figures: dict[str, float]) -> dict[str, float]:
    return {
        metric: float(figures[field])
        for metric, (field, _, sets, _) in METRICS.items()
        if "DS3" in sets and field in figures
    }


def stats_field(stats: Stats, name: str) -> Latencies:
    latencies = getattr(stats, name)
    assert isinstance(latencies, Latencies)
    return latencies


def _datum(
    metric: str, dimensions: list[dict[str, str]], now: datetime.datetime, value: float, unit: str
) -> dict[str, Any]:
    return {"MetricName": metric, "Dimensions": dimensions, "Timestamp": now, "Value": value, "Unit": unit}


class MetricsPublisher:
    """Publishes the proxy's snapshot to CloudWatch as RDS Proxy's metrics, and its log lines to
    CloudWatch Logs, every metrics_period_seconds."""

    def __init__(self, config: ProxyConfig, proxy: Observed) -> None:
        self.config = config
        self.proxy = proxy
        self._previous: dict[tuple[str, str], float] = {}
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}  # (count, total) published
        self._log_lines: list[tuple[int, str]] = []
        self._log_stream = ""
        self._clients: dict[str, Any] = {}

    def _dimensions(self, kind: str, value: str = "") -> list[dict[str, str]]:
        proxy = {"Name": "ProxyName", "Value": self.config.name}
        group = {"Name": "TargetGroup", "Value": "default"}
        if kind == "DS1":
            return [proxy]
        if kind == "DS2":
            return [proxy, {"Name": "EndpointName", "Value": value}]
        if kind == "DS3":
            return [proxy, group, {"Name": "Target", "Value": value}]
        return [proxy, group, {"Name": "TargetRole", "Value": value}]

    def dimension_sets(self) -> dict[str, list[dict[str, str]]]:
        """The default endpoint's and the writer's dimension sets."""
        writer = next(part.instance for part in self.proxy.target_parts() if part.role == "READ_WRITE")
        assert writer is not None, "the writer's pool always names its instance"
        return {
            "DS1": self._dimensions("DS1"),
            "DS2": self._dimensions("DS2", "default"),
            "DS3": self._dimensions("DS3", writer),
            "DS4": self._dimensions("DS4", "READ_WRITE"),
        }

    def values(self) -> dict[str, float]:
        """Every metric's value now for the whole proxy (counts as totals since it started)."""
        snapshot = self.proxy.snapshot()
        _client_side(snapshot)
        available = snapshot["target_ready"] and snapshot.get("target_available", True)
        snapshot["availability_percentage"] = 100.0 if available else 0.0
        return {metric: float(snapshot[field]) for metric, (field, *_rest) in METRICS.items()}

    def rows(self, *, availability: bool = False) -> list[Row]:
        """The values of every dimension set (AvailabilityPercentage over the period since the last
        call when availability is asked for, else as it is now)."""
        rows = [Row("DS1", self._dimensions("DS1"), self.values())]
        rows[0].latencies = {
            metric: Latencies.merged([stats_field(stats, name) for _, stats in self.proxy.endpoint_parts()])
            for metric, (name, _) in _LATENCIES.items()
        }
        for endpoint, stats in self.proxy.endpoint_parts():
            figures = stats.snapshot()
            _client_side(figures)
            rows.append(
                Row(
                    "DS2",
                    self._dimensions("DS2", endpoint),
                    {m: float(figures[f]) for m, (f, _, sets, _) in METRICS.items() if "DS2" in sets},
                    {metric: stats_field(stats, name) for metric, (name, _) in _LATENCIES.items()},
                )
            )
        parts = self.proxy.target_parts()
        for role in dict.fromkeys(part.role for part in parts):
            mine = [part for part in parts if part.role == role]
            latency = Latencies.merged([mine[0].query_database_latency])
            instances = [(part, part.instance) for part in mine if part.instance is not None]
            if len(instances) == 1:
                # Per instance only where one instance has the role: the latencies are the role's.
                part, instance = instances[0]
                rows.append(
                    Row(
                        "DS3",
                        self._dimensions("DS3", instance),
                        _target_side(part.figures),
                        {"QueryDatabaseResponseLatency": latency},
                    )
                )
            else:
                rows += [
                    Row("DS3", self._dimensions("DS3", instance), _target_side(part.figures))
                    for part, instance in instances
                ]
            totals = {key: sum(part.figures[key] for part in mine) for key in mine[0].figures}
            values = _target_side(totals)
            values["AvailabilityPercentage"] = (
                self.proxy.availability_percentage(role) if availability else self.proxy.available(role)
            )
            rows.append(
                Row(
                    "DS4",
                    self._dimensions("DS4", role),
                    values,
                    {"QueryDatabaseResponseLatency": latency},
                )
            )
        return rows

    def metric_data(self, now: datetime.datetime) -> list[dict[str, Any]]:
        """One publication: gauges as they are, counts since the previous publication."""
        data: list[dict[str, Any]] = []
        for row in self.rows(availability=True):
            key = json.dumps(row.dimensions, sort_keys=True)
            for metric, (_, unit, dimension_sets, kind) in METRICS.items():
                if row.kind not in dimension_sets or metric not in row.values:
                    continue
                value = row.values[metric]
                if kind == "count":
                    previous = self._previous.get((metric, key), 0.0)
                    value, self._previous[(metric, key)] = value - previous, value
                data.append(_datum(metric, row.dimensions, now, value, unit))
            for metric, latencies in row.latencies.items():
                if row.kind not in _LATENCIES[metric][1]:
                    continue
                # The period's average: what was added since the previous publication.
                seen_count, seen_total = self._seen.get((metric, key), (0, 0))
                self._seen[(metric, key)] = (latencies.count, latencies.total_us)
                if latencies.count == seen_count:
                    continue
                average = (latencies.total_us - seen_total) / (latencies.count - seen_count)
                data.append(_datum(metric, row.dimensions, now, average, "Microseconds"))
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
        """The service's client, made at its first use (publications come one at a time)."""
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = aws_client(
                service,
                self.config.region,
                endpoint_url=self.config.aws_endpoint_url,
                # moto's server cannot read botocore's gzipped PutMetricData; AWS does not need it gzipped.
                config=Config(disable_request_compression=True),
            )
        return client

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
