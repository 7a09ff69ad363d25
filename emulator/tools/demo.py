"""The connection-exhaustion demonstration: the same burst of invocations, directly and through a pooler."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from emulator.awslambda.function import FunctionConfig, InitMode, LambdaFunction, start_zygote
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.pgbouncer import find_pgbouncer
from emulator.stack.proxies import ProxyComponent, ProxyKind
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.tools.activity import BackendSampler, ConnectionSamples
from emulator.tools.burst import BurstResult, invoke_burst
from emulator.tools.consoles import console as output_console
from emulator.tools.consoles import note
from emulator.twin.config import expand

DIRECT = "direct"


@dataclass(frozen=True)
class DemoConfig:
    invocations: int = 500
    # Through a pool of 5, 500 invocations queue for invocations x work / 5: 5 s at 50 ms.
    work_ms: int = 50
    # 500 Inits at ~0.1 s of CPU each would take most of a 2-core minute per way: restore them from
    # one Init, as SnapStart does. The handler connects after Init, so nothing shown changes.
    init: InitMode = "snapshot"
    chart: Path = Path("connection-exhaustion.png")
    handler_log: Path = Path("connection-exhaustion-handler.log")
    stack: StackConfig = field(default_factory=StackConfig)
    # Your function instead of the kit's example (--handler, --code, ...); its environment is the
    # way's (DB_PROXY_ENDPOINT, DB_PORT, DB_AUTH, ...) with its own on top, ${NAME} expanded.
    function: FunctionConfig | None = None
    # The event every invocation gets; None: {"sleep_ms": work_ms}, what the example handler takes.
    payload: Mapping[str, Any] | None = None


def _each_invocation(config: DemoConfig) -> str:
    """What each invocation does, as the header says it: the example's work, or the event given."""
    if config.payload is None:
        return f"each {config.work_ms} ms of work"
    event = json.dumps(config.payload, separators=(",", ":"))
    return f"each with the event {event if len(event) <= 40 else event[:37] + '...'}"


@dataclass
class Way:
    """One way of reaching the database, and what the burst did through it."""

    name: str
    burst: BurstResult
    samples: ConnectionSamples
    pool_cap: int | None
    # From the RDS Proxy emulator's counters: borrow latency (microseconds) and pinned sessions.
    borrow_p50_us: int | None = None
    borrow_p99_us: int | None = None
    pinned: int | None = None

    @property
    def unexpected_failures(self) -> Counter[str]:
        """Failures the demo does not set out to show: any through a pooler; directly, any but
        PostgreSQL refusing a connection for want of slots (SQLSTATE 53300)."""
        errors = Counter(self.burst.errors)
        if self.name == DIRECT:
            for error in [e for e in errors if e.startswith("53300 ")]:
                del errors[error]
        return errors

    def refused_times(self) -> list[float]:
        """When each connection PostgreSQL refused (53300) was reported, on the samples' clock."""
        return [
            ended - self.samples.origin
            for ended, error in self.burst.ended
            if error is not None and error.startswith("53300 ")
        ]


def _burst_through(
    stack: EmbeddedStack, proxy: ProxyComponent, name: str, config: DemoConfig, progress: Progress
) -> Way:
    invoke = progress.add_task(name, total=config.invocations)
    environment = stack.handler_environment(proxy)
    if config.function is None:
        function = FunctionConfig(environment=environment, timeout_seconds=60)
    else:
        own = expand(config.function.environment, {**stack.environment(), **environment})
        function = replace(config.function, environment={**environment, **own})
    function = replace(function, log_path=config.handler_log.resolve(), init=config.init)
    # Idle connections the other proxies keep are not this way's: leave them out of its count.
    others = set().union(*(other.backend_pids() for other in stack.proxies.values() if other is not proxy))
    with (
        LambdaFunction(function) as lambda_function,
        BackendSampler(
            stack.postgres,
            user=stack.config.db_user,
            exclude=others,
            client_port=None if proxy is stack.direct else proxy.port,
            client_host=proxy.host,
        ) as sampler,
    ):
        burst = invoke_burst(
            lambda_function,
            config.invocations,
            {"sleep_ms": config.work_ms} if config.payload is None else config.payload,
            on_done=lambda: progress.advance(invoke),
        )
    if isinstance(proxy, RdsProxyEmulator):
        stats = proxy.stats()
        latency = stats["borrow_latency_us"]
        return Way(
            name,
            burst,
            sampler.samples,
            stats["max_database_connections_allowed"],
            latency["p50"],
            latency["p99"],
            stats["peak_pinned_sessions"],
        )
    cap = None if proxy is stack.direct else stack.config.pool_size
    return Way(name, burst, sampler.samples, cap)


def run_demo(config: DemoConfig, console: Console | None = None) -> list[Way]:
    console = console or output_console()
    # The function's log (every failed invocation's lines) goes to a file; the table sums it up.
    config.handler_log.write_bytes(b"")
    handler_log = logging.FileHandler(config.handler_log)
    logging.getLogger().addHandler(handler_log)
    pgbouncer = (ProxyKind.PGBOUNCER,) if find_pgbouncer() is not None else ()
    stack_config = replace(config.stack, proxy=ProxyKind.EMULATOR, extra_proxies=pgbouncer)
    # The environments' zygote imports its libraries while the stack starts (most of a second).
    start_zygote()
    try:
        with contextlib.ExitStack() as running:
            with console.status("Starting PostgreSQL, the AWS API emulator and the proxies..."):
                stack = running.enter_context(EmbeddedStack(stack_config))
            header = (
                f"PostgreSQL {stack.postgres.binaries.version} with max_connections="
                f"{stack_config.max_connections}; pool size {stack_config.pool_size}; "
                f"{config.invocations} concurrent invocations, {_each_invocation(config)}; "
                f"execution environments: {config.init.replace('_', ' ')} Init."
            )
            console.print(note(header, console), markup=False, highlight=False)
            if not pgbouncer:
                console.print(
                    "PgBouncer is not installed: its column is left out (apt-get install pgbouncer)."
                )
            progress = progress_display(console)
            with progress:
                ways = [
                    _burst_through(stack, stack.direct, DIRECT, config, progress),
                    _burst_through(stack, stack.proxy, "RDS Proxy emulator", config, progress),
                ]
                if pgbouncer:
                    ways.append(
                        _burst_through(
                            stack, stack.proxies[ProxyKind.PGBOUNCER], "PgBouncer", config, progress
                        )
                    )
            # The chart's library loads while the stack stops, which is mostly waiting for processes.
            threading.Thread(target=_load_chart_library, name="chart-import", daemon=True).start()
    finally:
        logging.getLogger().removeHandler(handler_log)
        handler_log.close()
    print_results(ways, console)
    try:
        write_chart(ways, config)
    except ImportError:
        hint = "No chart: it needs matplotlib (pip install 'rds-proxy-local-twin[demo]')."
        console.print(hint, markup=False)
    else:
        console.print(f"Chart: {config.chart.resolve()}")
    return ways


def progress_display(console: Console) -> Progress:
    """One line per way: "RDS Proxy emulator  ━━━━  500/500 0:00:13", 80 columns at most (the
    description 18, the bar 30: the 40 of rich's default made the lines 88 wide)."""
    return Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def print_results(ways: list[Way], console: Console) -> None:
    """The table, why a pinned pool failed invocations, the legend, and each way's errors (one
    line per kind, with one invocation's request id where Lambda's message named it), in 80
    columns."""
    console.print(results_table(ways))
    for hint in filter(None, map(pinned_pool_hint, ways)):
        console.print(note(hint, console), markup=False, highlight=False)
    console.print(note(LEGEND, console), markup=False, highlight=False)
    for way in ways:
        for error, count in way.burst.errors.most_common():
            request_id = way.burst.request_ids.get(error)
            example = f" (e.g. request {request_id})" if request_id else ""
            line = note(f"{way.name}: {count} x {error}{example}", console, "  ", "    ")
            console.print(line, markup=False, highlight=False)


def pinned_pool_hint(way: Way) -> str | None:
    """Why invocations failed when their pool's every connection was pinned (peak pinned = pool
    cap): a pinned session keeps its connection while its environment is frozen, so the others
    waited for a borrow until they failed (at Lambda's timeout or the proxy's borrow timeout).
    That wait is in no borrow latency (only borrows that succeeded are), hence a line saying so."""
    if way.pinned is None or not way.pool_cap or way.pinned < way.pool_cap or not way.burst.failed:
        return None
    return f"{way.name}: all {way.pool_cap} pooled connections pinned; the rest waited to borrow"


LEGEND = (
    "ok/failed: invocations without/with a function error (Lambda's notion of success); peak clients "
    "and DB: connections to the proxy and to PostgreSQL; cap: the pool's; borrow: ms a request waited "
    "for a database connection; wall: seconds for the burst."
)


def results_table(ways: list[Way]) -> Table:
    """One row per way, in 80 columns: short two-line headers, the legend printed below."""
    invocations = ways[0].burst.invocations if ways else 0
    table = Table(
        title=f"{invocations} concurrent invocations, {len(ways)} ways",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    table.add_column("way", no_wrap=True)
    for column in (
        "ok",
        "failed",
        "peak\nclients",
        "peak\nDB",
        "pool\ncap",
        "borrow ms\np50/p99",
        "pinned",
        "wall\ns",
    ):
        table.add_column(column, justify="right", no_wrap=True)
    for way in ways:
        borrow = (
            "-"
            if way.borrow_p50_us is None
            else f"{way.borrow_p50_us / 1000:.1f}/{(way.borrow_p99_us or 0) / 1000:.0f}"
        )
        table.add_row(
            way.name,
            str(way.burst.succeeded),
            str(way.burst.failed),
            str(way.samples.peak_clients),
            str(way.samples.peak),
            "-" if way.pool_cap is None else str(way.pool_cap),
            borrow,
            "-" if way.pinned is None else str(way.pinned),
            f"{way.burst.wall_seconds:.1f}",
        )
    return table


def _load_chart_library() -> None:
    with contextlib.suppress(ImportError):  # write_chart says what is missing
        import matplotlib  # noqa: PLC0415 - a heavy import only the chart needs

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: PLC0415


def write_chart(ways: list[Way], config: DemoConfig) -> None:
    """One panel per way on one time axis; the legend below the panels, where it hides no line."""
    import matplotlib  # noqa: PLC0415 - a heavy import only the chart needs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(
        1, len(ways), figsize=(5 * len(ways), 4.6), sharex=True, sharey=True, squeeze=False
    )
    end = max((way.samples.times[-1] for way in ways if way.samples.times), default=1.0)
    for ax, way in zip(axes[0], ways, strict=True):
        samples = way.samples
        if samples.clients:
            ax.step(
                samples.client_times,
                samples.clients,
                where="post",
                color="tab:orange",
                label="client connections (execution environments)",
            )
        ax.step(
            samples.times,
            samples.counts,
            where="post",
            color="tab:blue",
            label="database connections (app role)",
        )
        refused = way.refused_times()
        if refused:
            # Every attempt PostgreSQL refused, counted when its invocation failed.
            ax.step(
                [0.0, *refused],
                range(len(refused) + 1),
                where="post",
                color="tab:red",
                label="refused connection attempts (cumulative, SQLSTATE 53300)",
            )
        ax.axhline(config.stack.max_connections, color="black", linestyle="--", label="max_connections")
        if way.pool_cap is not None:
            # A wide pale band under the lines: a full pool's database connections run along it
            # and stay visible (a thin line there hid them).
            ax.axhline(way.pool_cap, color="tab:green", linewidth=7, alpha=0.3, zorder=1, label="pool cap")
        ax.set_title(f"{way.name}: {way.burst.succeeded} ok, {way.burst.failed} failed")
        ax.set_xlabel("seconds since the burst started")
        # Hundreds of clients and a handful of database connections on one readable axis.
        ax.set_yscale("symlog", linthresh=10)
        ax.set_xlim(0, end)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("connections")
    labels: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labels.setdefault(label, handle)
    fig.legend(labels.values(), labels.keys(), loc="lower center", ncol=3, fontsize="small", frameon=False)
    fig.suptitle(f"{config.invocations} concurrent Lambda invocations")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(config.chart, dpi=100)
    plt.close(fig)
