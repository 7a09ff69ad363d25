"""The failover demonstration: the same steady load of invocations directly and through the proxy
while the database fails over, and what each way experienced.

Both loads run at once, so they meet the very same failover: the writer is fenced (its connections
drop), a standby is promoted, and the database endpoint's name reaches the new writer only after a
DNS-like delay. The direct path waits for that name; the proxy finds the new writer itself ("RDS
Proxy bypasses DNS caches to reduce failover times by up to 66%"): the numbers show whether that
holds here and why.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from emulator.awslambda.function import FunctionConfig, LambdaFunction
from emulator.errors import ComponentError
from emulator.stack.cluster import ClusterKind
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.proxies import ProxyComponent, ProxyKind
from emulator.tools.burst import invoke_burst
from emulator.tools.interruption import FailoverMoments, Interruption, interruption, shorter_by
from emulator.tools.steady import Call, SteadyLoad
from emulator.twin.config import expand

DIRECT = "direct"
PROXIED = "RDS Proxy emulator"


@dataclass(frozen=True)
class FailoverDemoConfig:
    # Warm execution environments per way, each invoking every `period` seconds.
    workers: int = 8
    period: float = 0.1
    # Each invocation's transaction; short, so that the load is steady rather than queued.
    work_ms: int = 20
    # Load before the failover (the steady state) and after the database endpoint has switched.
    before_seconds: float = 3.0
    after_seconds: float = 4.0
    chart: Path = Path("failover.png")
    handler_log: Path = Path("failover-handler.log")
    # Your function instead of the kit's example (--handler, --code, ...); its environment is the
    # way's (DB_PROXY_ENDPOINT, DB_PORT, DB_AUTH, ...) with its own on top, ${NAME} expanded.
    function: FunctionConfig | None = None
    # The event every invocation gets; None: {"sleep_ms": work_ms}, what the example handler takes.
    payload: Mapping[str, Any] | None = None
    # The database: a Multi-AZ instance by default, the case AWS's "up to 66%" is about.
    stack: StackConfig = field(default_factory=lambda: StackConfig(database_kind=ClusterKind.MULTI_AZ))


@dataclass
class WayLoad:
    name: str
    load: SteadyLoad
    outcome: Interruption | None = None


def function_for_way(
    stack: EmbeddedStack, proxy: ProxyComponent, config: FailoverDemoConfig
) -> FunctionConfig:
    """The way's function: its environment reaches the database that way; one per way, each with
    warm environments of its own."""
    way = "direct" if proxy is stack.direct else "proxied"
    environment = stack.handler_environment(proxy)
    if config.function is None:
        function = FunctionConfig(name="failover", environment=environment, timeout_seconds=60)
    else:
        own = expand(config.function.environment, {**stack.environment(), **environment})
        function = replace(config.function, environment={**environment, **own})
    return replace(
        function, name=f"{function.name}-{way}", log_path=config.handler_log.resolve(), init="snapshot"
    )


def run_failover_demo(config: FailoverDemoConfig, console: Console | None = None) -> list[WayLoad]:
    # The table is 68 columns: in a file or a CI log too, everything fits 80.
    console = console or Console(width=None if sys.stdout.isatty() else 80)
    config.handler_log.write_bytes(b"")
    handler_log = logging.FileHandler(config.handler_log)
    logging.getLogger().addHandler(handler_log)
    stack_config = replace(config.stack, proxy=ProxyKind.EMULATOR, extra_proxies=())
    try:
        with contextlib.ExitStack() as running:
            with console.status("Starting a replicated PostgreSQL, the AWS API emulator and the proxy..."):
                stack = running.enter_context(EmbeddedStack(stack_config))
            ways: list[WayLoad] = []
            event = {"sleep_ms": config.work_ms} if config.payload is None else config.payload
            for name, proxy in ((DIRECT, stack.direct), (PROXIED, stack.proxy)):
                function = running.enter_context(LambdaFunction(function_for_way(stack, proxy, config)))
                load = SteadyLoad(function, event, workers=config.workers, period=config.period)
                ways.append(WayLoad(name, load))
            ttl = stack.config.dns_ttl_seconds
            console.print(
                f"{_describe(stack)}; the database endpoint follows a failover after "
                f"{ttl:g} s (DNS-like delay). Each way: {config.workers} warm environments, one "
                f"invocation every {config.period * 1000:.0f} ms each, {_work(config)}."
            )
            _warm(ways, config, console)
            origin = time.monotonic()
            for way in ways:
                way.load.start()
            with console.status(f"Steady load for {config.before_seconds:g} s..."):
                time.sleep(config.before_seconds)  # the steady state the chart starts with
            started = time.monotonic()
            with console.status("Failing over: fencing the writer, promoting the standby..."):
                report = stack.failover()
            # The topology names the new writer once it is promoted; the endpoint follows a TTL later.
            writer_ready = started + report.fence_seconds + report.promote_seconds
            moments = FailoverMoments(started, writer_ready, writer_ready + ttl)
            console.print(
                f"Failover: {report.old_writer} fenced in {report.fence_seconds:.2f} s, "
                f"{report.new_writer} promoted in {report.promote_seconds:.2f} s "
                f"({report.total_seconds:.2f} s in all); the old writer is {report.old_writer_fate}."
            )
            with console.status(f"Load until {config.after_seconds:g} s after the endpoint switched..."):
                time.sleep(max(0.0, moments.endpoint_switched + config.after_seconds - time.monotonic()))
            for way in ways:
                way.load.stop()
                way.outcome = interruption(way.load.calls, moments, origin)
    finally:
        logging.getLogger().removeHandler(handler_log)
        handler_log.close()
    console.print(results_table(ways))
    console.print(LEGEND)
    for way in ways:
        assert way.outcome is not None
        for error, count in way.outcome.errors.most_common():
            console.print(f"  {way.name}: {count} x {error}", markup=False, highlight=False)
    console.print(verdict(ways, moments), markup=False)
    try:
        write_chart(ways, moments, origin, config)
    except ImportError:
        console.print(
            "No chart: it needs matplotlib (pip install 'rds-proxy-local-twin[demo]').", markup=False
        )
    else:
        console.print(f"Chart: {config.chart.resolve()}")
    return ways


def _work(config: FailoverDemoConfig) -> str:
    handler = "the example handler" if config.function is None else config.function.handler
    event = f"{config.work_ms} ms of work" if config.payload is None else "your event"
    return f"{handler}, {event}"


def _describe(stack: EmbeddedStack) -> str:
    cluster = stack.cluster
    assert cluster is not None
    names = ", ".join(f"{instance.name} ({instance.role})" for instance in cluster.instances)
    return f"PostgreSQL {stack.postgres.binaries.version}, {stack.config.database_kind}: {names}"


def _warm(ways: list[WayLoad], config: FailoverDemoConfig, console: Console) -> None:
    """Every environment started and connected before the clock starts: the failover, not cold
    starts, is what the chart shows."""
    with console.status("Warming the execution environments..."):
        for way in ways:
            # As many at once as there are workers: each starts an environment of its own.
            burst = invoke_burst(way.load.function, config.workers, way.load.event)
            if burst.errors:
                error, _ = burst.errors.most_common(1)[0]
                raise ComponentError(
                    f"failover demo, {way.name}",
                    f"the function fails before any failover: {error}",
                    f"see why in the function's log, {config.handler_log.resolve()}",
                )


LEGEND = (
    "calls/ok/failed: invocations in the run; longest gap: the longest time without a successful "
    "invocation; waited: invocations in flight when the new writer became ready that still "
    "succeeded; recovered: seconds from the failover's start to the first success of an "
    "invocation that started after it."
)


def results_table(ways: list[WayLoad]) -> Table:
    table = Table(
        title="A steady load through a failover",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    table.add_column("way", no_wrap=True)
    for column in ("calls", "ok", "failed", "longest\ngap s", "waited", "recovered\ns"):
        table.add_column(column, justify="right", no_wrap=True)
    for way in ways:
        outcome = way.outcome
        assert outcome is not None
        recovered = "-" if outcome.recovered_after is None else f"{outcome.recovered_after:.2f}"
        table.add_row(
            way.name,
            str(outcome.calls),
            str(outcome.succeeded),
            str(outcome.failed),
            f"{outcome.longest_gap:.2f}",
            str(outcome.waited),
            recovered,
        )
    return table


def verdict(ways: list[WayLoad], moments: FailoverMoments) -> str:
    by_name = {way.name: way.outcome for way in ways}
    direct, proxied = by_name.get(DIRECT), by_name.get(PROXIED)
    if direct is None or proxied is None:
        return ""
    shorter = shorter_by(proxied, direct)
    if shorter is None:
        return "The direct path saw no interruption: nothing to compare."
    for name, outcome in ((DIRECT, direct), (PROXIED, proxied)):
        if outcome.recovered_after is None:
            return f"No comparison: {_never_recovered(name, outcome)}."
    compared = (
        f"Through the proxy the longest interruption was {proxied.longest_gap:.2f} s against "
        f"{direct.longest_gap:.2f} s directly: "
        f"{f'{shorter:.0%} shorter' if shorter >= 0 else f'{-shorter:.0%} longer'} "
        "(AWS: 'up to 66%' for Multi-AZ). "
    )
    switched = moments.endpoint_switched - moments.started
    if direct.recovered_after is not None and direct.recovered_after < switched:
        # Aurora: the old writer rejoins as a reader, and the name still leads to it.
        return compared + (
            f"The direct path was back after {direct.recovered_after:.1f} s, before the endpoint's "
            f"name reached the new writer ({switched:.1f} s): the name still led to the old writer, "
            "which answered again once it rejoined as a reader (reads work there; writes fail as "
            "read-only, and keep failing on a connection kept to it). The proxy waits only for the "
            "promotion."
        )
    ttl = moments.endpoint_switched - moments.writer_ready
    return compared + (
        f"The direct path waits for the endpoint's name to reach the new writer ({ttl:g} s after "
        "the promotion here); the proxy waits only for the promotion."
    )


def write_chart(
    ways: list[WayLoad], moments: FailoverMoments, origin: float, config: FailoverDemoConfig
) -> None:
    """Successful and failed invocations per bin for each way on one time axis, the failover's
    moments as vertical lines, the legend below the plot where it hides no line."""
    import matplotlib  # noqa: PLC0415 - a heavy import only the chart needs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    width = 0.25
    fig, ax = plt.subplots(figsize=(9, 5))
    colors = {DIRECT: "tab:red", PROXIED: "tab:blue"}
    end = max((call.ended - origin for way in ways for call in way.load.calls), default=1.0)
    bins = int(end / width) + 1
    for way in ways:
        color = colors.get(way.name, "tab:gray")
        ok, failed = _per_bin(way.load.calls, origin, width, bins)
        times = [index * width for index in range(bins)]
        ax.step(times, ok, where="post", color=color, label=f"{way.name}: successful invocations")
        ax.step(
            times, failed, where="post", color=color, linestyle="--", label=f"{way.name}: failed invocations"
        )
    for at, label, style in (
        (moments.started, "failover started (writer fenced)", ":"),
        (moments.writer_ready, "new writer ready", "-."),
        (moments.endpoint_switched, "database endpoint switched (DNS-like delay)", "--"),
    ):
        ax.axvline(at - origin, color="black", linestyle=style, label=label)
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel(f"invocations per {width * 1000:.0f} ms")
    ax.set_xlim(0, end)
    ax.grid(alpha=0.3)
    ax.set_title("A steady load of Lambda invocations through a database failover")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(config.chart, dpi=100)
    plt.close(fig)


def _per_bin(calls: list[Call], origin: float, width: float, bins: int) -> tuple[list[int], list[int]]:
    ok, failed = [0] * bins, [0] * bins
    for call in calls:
        index = min(bins - 1, max(0, int((call.ended - origin) / width)))
        (ok if call.ok else failed)[index] += 1
    return ok, failed


def exit_code(ways: list[WayLoad], config: FailoverDemoConfig) -> int:
    """1 when the demo failed (see failure), 0 otherwise."""
    return 0 if failure(ways, config) is None else 1


def failure(ways: list[WayLoad], config: FailoverDemoConfig) -> str | None:
    """Why the demo failed: a way never recovered, or more proxied invocations failed than were in
    flight at the failover (one per worker at most: the rest should wait, not fail); None if not."""
    outcomes = {way.name: way.outcome for way in ways}
    for name in (DIRECT, PROXIED):
        outcome = outcomes.get(name)
        if outcome is None:
            return f"the {name} way did not run"
        if outcome.recovered_after is None:
            return _never_recovered(name, outcome)
    proxied = outcomes[PROXIED]
    assert proxied is not None
    if proxied.failed > config.workers:
        return (
            f"through the proxy {proxied.failed} invocations failed, more than the {config.workers} "
            f"that can be in flight at the failover (one per worker)"
        )
    return None


def _never_recovered(name: str, outcome: Interruption) -> str:
    way = "the direct path" if name == DIRECT else "the way through the proxy"
    common = outcome.errors.most_common(1)
    errors = f" ({common[0][1]} x {common[0][0]})" if common else ""
    return f"{way} never recovered within the run{errors}"
