"""Area 5, invoke latency: a warm invoke's round trip over the handler's own time, and cold starts.

`up` runs bench/functions/noop.py (a handler that returns at once) under several names: one for
the warm invokes, one per cold start (each name's first invoke starts a fresh environment). The
round trip is boto3's `invoke` against the twin's Lambda API, as a user's code calls it; the
handler's own time is the REPORT line's Duration (LogType=Tail), so round trip - Duration is what
the twin adds. Plain HTTP (no boto3) is measured too, on a kept-alive connection and on a new one
per request, to tell the SDK's share and the connection's from the twin's.
"""

from __future__ import annotations

import base64
import http.client
import re
import statistics
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3

from bench.report import Area, Figure, Table, at_most, progress
from bench.upcli import running_up

GOAL_MS = 5.0
# Linux delays an ACK by up to 40 ms: a gap this large between kept-alive and new connections is that.
DELAYED_ACK_MS = 25.0
CODE = Path(__file__).resolve().parent / "functions"
HANDLER = "noop.handler"
WARM = "bench-warm"
_DURATION = re.compile(r"\tDuration: ([\d.]+) ms")
_INIT = re.compile(r"Init Duration: ([\d.]+) ms")


@dataclass(frozen=True)
class Timed:
    round_trip_ms: float
    duration_ms: float  # the handler's own, from the REPORT line
    init_ms: float | None  # a cold start's Init Duration

    @property
    def overhead_ms(self) -> float:
        return self.round_trip_ms - self.duration_ms


def _from_log(round_trip_ms: float, log_base64: str) -> Timed:
    log = base64.b64decode(log_base64).decode(errors="replace")
    duration = _DURATION.search(log)
    if duration is None:
        raise RuntimeError(f"no REPORT Duration in the invocation's log: {log[-300:]!r}")
    init = _INIT.search(log)
    return Timed(round_trip_ms, float(duration[1]), float(init[1]) if init else None)


def _boto3_invoke(env: dict[str, str]) -> Callable[[str], Timed]:
    client = boto3.session.Session().client(
        "lambda",
        endpoint_url=env["AWS_ENDPOINT_URL_LAMBDA"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )

    def invoke(name: str) -> Timed:
        started = time.perf_counter()
        answer = client.invoke(FunctionName=name, Payload=b"{}", LogType="Tail")
        answer["Payload"].read()
        round_trip = (time.perf_counter() - started) * 1000
        if answer.get("FunctionError"):
            raise RuntimeError(f"{name} failed: {answer['FunctionError']}")
        return _from_log(round_trip, answer["LogResult"])

    return invoke


def _http_invoke(env: dict[str, str], *, keep_alive: bool) -> Callable[[str], Timed]:
    """Invoke over plain HTTP: on one kept-alive connection (as boto3 does), or a new one each time."""
    url = urllib.parse.urlsplit(env["AWS_ENDPOINT_URL_LAMBDA"])
    kept: list[http.client.HTTPConnection] = []

    def invoke(name: str) -> Timed:
        started = time.perf_counter()
        if not kept:
            kept.append(http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30))
        connection = kept[0]
        try:
            connection.request(
                "POST",
                f"/2015-03-31/functions/{name}/invocations",
                body=b"{}",
                headers={"X-Amz-Log-Type": "Tail"},
            )
            response = connection.getresponse()
            response.read()
        finally:
            if not keep_alive:
                connection.close()
                kept.clear()
        round_trip = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"{name}: HTTP {response.status}")
        return _from_log(round_trip, response.getheader("X-Amz-Log-Result") or "")

    return invoke


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(invokes: int, cold_starts: int) -> Area:
    area = Area("invoke", "5. Invoke latency: a handler that returns at once")
    args = ["--handler", HANDLER, "--code", str(CODE), "--function-name", WARM]
    cold_names = [f"bench-cold-{number}" for number in range(1, cold_starts + 1)]
    for name in cold_names:
        args += ["--function", f"{name}={CODE}:{HANDLER}"]
    with running_up(args) as up:
        boto3_invoke = _boto3_invoke(up.env)
        first = boto3_invoke(WARM)
        progress("invoke", f"first invoke (cold, the forkserver starts): {first.round_trip_ms:.0f} ms")
        ways = {
            "boto3": boto3_invoke,
            "HTTP kept alive": _http_invoke(up.env, keep_alive=True),
            "HTTP new connection": _http_invoke(up.env, keep_alive=False),
        }
        warm: dict[str, list[Timed]] = {}
        for label, way in ways.items():
            for _ in range(5):  # first-use costs (a connection, lazy imports) out of the figures
                way(WARM)
            warm[label] = [way(WARM) for _ in range(invokes)]
            progress("invoke", f"{invokes} warm invokes, {label}")
        cold = [boto3_invoke(name) for name in cold_names]
    _report(area, Measured(first, warm, cold))
    return area


@dataclass(frozen=True)
class Measured:
    first: Timed  # the very first invoke: a cold start that also starts the forkserver
    warm: dict[str, list[Timed]]  # by way: boto3, HTTP kept alive, HTTP new connection
    cold: list[Timed]


def _summary(label: str, values: list[float]) -> list[str]:
    return [
        label,
        f"{statistics.median(values):.2f}",
        f"{_percentile(values, 0.95):.2f}",
        f"{min(values):.2f}",
    ]


def _report(area: Area, measured: Measured) -> None:
    boto3_warm, cold = measured.warm["boto3"], measured.cold
    overhead = [t.overhead_ms for t in boto3_warm]
    rows = [
        _summary("warm, boto3: round trip", [t.round_trip_ms for t in boto3_warm]),
        _summary("warm: the handler's Duration", [t.duration_ms for t in boto3_warm]),
    ]
    rows += [
        _summary(f"warm, {label}: trip - Duration", [t.overhead_ms for t in timed])
        for label, timed in measured.warm.items()
    ]
    if cold:
        rows.append(_summary("cold start: round trip", [t.round_trip_ms for t in cold]))
        inits = [t.init_ms for t in cold if t.init_ms is not None]
        if inits:
            rows.append(_summary("cold start: Init Duration", inits))
    area.tables.append(Table(["invoke (ms)", "median", "p95", "min"], rows))
    area.figures.append(
        at_most("warm invoke over the handler, median", statistics.median(overhead), GOAL_MS, unit=" ms")
    )
    area.figures.append(Figure("warm invoke over the handler, p95", f"{_percentile(overhead, 0.95):.1f} ms"))
    if cold:
        median_cold = statistics.median(t.round_trip_ms for t in cold)
        area.figures.append(Figure("cold start, median round trip", f"{median_cold:.0f} ms"))
    area.figures.append(
        Figure("first invoke (the forkserver starts)", f"{measured.first.round_trip_ms:.0f} ms")
    )
    kept = statistics.median(t.overhead_ms for t in measured.warm["HTTP kept alive"])
    fresh = statistics.median(t.overhead_ms for t in measured.warm["HTTP new connection"])
    if kept - fresh > DELAYED_ACK_MS:
        area.notes.append(
            f"a kept-alive connection is {kept - fresh:.0f} ms slower than a new one: the mark of Nagle's "
            "algorithm meeting a delayed ACK (a response written in two sends without TCP_NODELAY waits "
            "for the client's ACK of the first, which a connection past its first exchanges delays ~40 ms)"
        )
    area.notes.append(
        f"{len(boto3_warm)} warm invokes each way after 5 unmeasured ones: boto3's invoke; plain HTTP on "
        "one kept-alive connection, as boto3 keeps one; plain HTTP on a new connection each time. "
        f"{len(cold)} cold starts, each a function's first invoke (an environment that runs Init, as "
        "on-demand Lambda); the very first invoke also starts the Lambda forkserver and is shown apart"
    )
