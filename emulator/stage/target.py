"""Where tests/aws run: the local twin or the deployed stack, seen through the same AWS APIs.

A scenario reaches either target the same way: it invokes the Lambda functions (the handler and
the probe, which runs SQL sessions from inside the VPC), reads the proxy's CloudWatch metrics and
its log group. Locally the Invoke calls go to the kit's Lambda emulator and the metrics and log
lines to the AWS API emulator, where the RDS Proxy emulator publishes them as RDS Proxy does.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from emulator.wait import wait_until

# The settings both targets run with: a small pool, so a burst shares it and a borrow can time out,
# a short borrow timeout, and the log lines that name pin reasons.
STAGE_VARIABLES: dict[str, str] = {
    "proxy_max_connections_percent": "5",
    "proxy_connection_borrow_timeout": "5",
    "proxy_debug_logging": "true",
    "stage_probe": "true",
}
# The same, by the emulator's names (the local twin's proxy).
STAGE_PROXY_SETTINGS: dict[str, Any] = {
    "max_connections_percent": int(STAGE_VARIABLES["proxy_max_connections_percent"]),
    "connection_borrow_timeout": int(STAGE_VARIABLES["proxy_connection_borrow_timeout"]),
    "debug_logging": STAGE_VARIABLES["proxy_debug_logging"] == "true",
}
# What the targets' outputs must name (terraform/outputs.tf; the local twin provides the same keys).
OUTPUT_KEYS = (
    "proxy_name",
    "lambda_function_name",
    "probe_function_name",
    "proxy_log_group",
    "db_username",
)


# RDS Proxy's metrics reach CloudWatch a few minutes late, its log lines within a minute or two.
AWS_METRICS_DEADLINE = 420.0
# Where `nox -s aws` hands the deployed stack's Terraform outputs to tests/aws.
OUTPUTS_ENV = "LOCAL_TWIN_STAGE_OUTPUTS"
# Where tests/aws write each target's figures for the comparison report.
RESULTS_ENV = "LOCAL_TWIN_STAGE_RESULTS"


class InvocationFailed(AssertionError):
    """The function answered with an error (FunctionError) instead of a result."""


@dataclass
class StageTarget:
    name: str  # "local" or "aws"
    outputs: Mapping[str, Any]
    client: Callable[[str], Any]  # service name -> boto3 client
    # CloudWatch has RDS Proxy's one-minute figures a few minutes late; the local twin publishes
    # every few seconds.
    metrics_deadline: float
    # How often to ask again (CloudWatch's API calls count against a quota in AWS).
    poll_seconds: float
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def function(self) -> str:
        return str(self.outputs["lambda_function_name"])

    @property
    def probe_function(self) -> str:
        return str(self.outputs["probe_function_name"])

    def invoke(self, function: str, event: Mapping[str, Any]) -> Any:
        answer = self.client("lambda").invoke(
            FunctionName=function, InvocationType="RequestResponse", Payload=json.dumps(event).encode()
        )
        payload = json.loads(answer["Payload"].read() or b"null")
        if answer.get("FunctionError"):
            raise InvocationFailed(f"{function} failed: {payload}")
        return payload

    def invoke_event(self, function: str, event: Mapping[str, Any]) -> None:
        """An asynchronous invocation (InvocationType=Event), as an event source would make."""
        answer = self.client("lambda").invoke(
            FunctionName=function, InvocationType="Event", Payload=json.dumps(event).encode()
        )
        assert answer["StatusCode"] == 202, answer

    def probe(self, sessions: list[dict[str, Any]], *, concurrent: bool = False) -> list[dict[str, Any]]:
        """SQL sessions run through the proxy from inside the VPC (lambda/probe.py)."""
        result = self.invoke(self.probe_function, {"sessions": sessions, "concurrent": concurrent})
        return list(result["sessions"])

    def metric_max(self, metric: str, since: datetime.datetime, statistic: str = "Maximum") -> float | None:
        """The largest one-minute figure of a proxy metric (dimension ProxyName) since `since`."""
        until = now()
        answer = self.client("cloudwatch").get_metric_statistics(
            Namespace="AWS/RDS",
            MetricName=metric,
            Dimensions=[{"Name": "ProxyName", "Value": str(self.outputs["proxy_name"])}],
            StartTime=since - datetime.timedelta(minutes=1),
            EndTime=until + datetime.timedelta(minutes=1),
            Period=60,
            Statistics=[statistic],
        )
        values = [float(point[statistic]) for point in answer["Datapoints"]]
        return max(values) if values else None

    def wait_for_metric(
        self,
        metric: str,
        since: datetime.datetime,
        accept: Callable[[float], bool],
        statistic: str = "Maximum",
    ) -> float:
        """Poll until the metric has a figure `accept` takes, up to the target's metrics deadline."""
        found: list[float] = []

        def accepted() -> bool:
            seen = self.metric_max(metric, since, statistic)
            if seen is None or not accept(seen):
                raise LookupError(f"{metric} ({statistic}) is {seen}")  # the timeout's last check
            found.append(seen)
            return True

        self._poll(accepted, f"{metric} on the {self.name} target")
        return found[-1]

    def log_messages(self, since: datetime.datetime) -> list[str]:
        """The proxy's log lines since `since` (empty while the log group does not exist yet)."""
        logs = self.client("logs")
        start = int(since.timestamp() * 1000)
        messages: list[str] = []
        arguments: dict[str, Any] = {"logGroupName": str(self.outputs["proxy_log_group"]), "startTime": start}
        try:
            while True:
                page = logs.filter_log_events(**arguments)
                messages += [event["message"] for event in page.get("events", [])]
                if not page.get("nextToken"):
                    return messages
                arguments["nextToken"] = page["nextToken"]
        except logs.exceptions.ResourceNotFoundException:
            return messages

    def wait_for_log(self, since: datetime.datetime, accept: Callable[[str], bool]) -> list[str]:
        """The log lines `accept` takes, once there is at least one (up to the metrics deadline)."""
        found: list[str] = []

        def any_accepted() -> bool:
            found[:] = [line for line in self.log_messages(since) if accept(line)]
            return bool(found)

        self._poll(any_accepted, f"a matching line in {self.outputs['proxy_log_group']} ({self.name})")
        return found

    def _poll(self, probe: Callable[[], bool], what: str) -> None:
        wait_until(probe, component=what, timeout=self.metrics_deadline, max_delay=self.poll_seconds)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def aws_target(outputs: Mapping[str, Any]) -> StageTarget:
    """The deployed stack, through the environment's credentials and region (and AWS_ENDPOINT_URL,
    which boto3 honours: the stage's offline tests point it at the AWS API emulator)."""
    session = boto3.session.Session()
    # The probe holds sessions past the borrow timeout; the default read timeout is 60 s.
    config = Config(read_timeout=180, retries={"max_attempts": 3, "mode": "standard"})
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            clients[service] = session.client(service, config=config)  # type: ignore[call-overload]
        return clients[service]

    missing = [key for key in OUTPUT_KEYS if not outputs.get(key)]
    if missing:
        raise ValueError(f"the deployed stack's outputs lack {', '.join(missing)} (was stage_probe set?)")
    return StageTarget(
        name="aws", outputs=outputs, client=client, metrics_deadline=AWS_METRICS_DEADLINE, poll_seconds=5.0
    )
