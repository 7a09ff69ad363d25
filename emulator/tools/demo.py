"""The connection-exhaustion demonstration: the same burst of invocations, directly and through a pooler."""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from emulator.awslambda.function import FunctionConfig, InitMode, LambdaFunction
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.pgbouncer import find_pgbouncer
from emulator.stack.proxies import ProxyComponent, ProxyKind
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.tools.activity import BackendSampler, ConnectionSamples
from emulator.tools.burst import BurstResult, invoke_burst


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


def _burst_through(
    stack: EmbeddedStack, proxy: ProxyComponent, name: str, config: DemoConfig, progress: Progress
) -> Way:
    invoke = progress.add_task(f"{name}: invocations", total=config.invocations)
    function = FunctionConfig(
        environment=stack.handler_environment(proxy),
        timeout_seconds=60,
        log_path=config.handler_log.resolve(),
        init=config.init,
    )
    # Idle connections the other proxies keep are not this way's: leave them out of its count.
    others = set().union(*(other.backend_pids() for other in stack.proxies.values() if other is not proxy))
    with (
        LambdaFunction(function) as lambda_function,
        BackendSampler(
            stack.postgres,
            user=stack.config.db_user,
            exclude=others,
            client_port=None if proxy is stack.direct else proxy.port,
        ) as sampler,
    ):
        burst = invoke_burst(
            lambda_function,
            config.invocations,
            {"sleep_ms": config.work_ms},
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
    # Wide enough for the table when the output is a file or a CI log, not a terminal.
    console = console or Console(width=None if sys.stdout.isatty() else 130)
    # The handler logs every failed invocation; keep those lines in a file, the table sums them up.
    handler_log = logging.FileHandler(config.handler_log, mode="w")
    logging.getLogger().addHandler(handler_log)
    pgbouncer = (ProxyKind.PGBOUNCER,) if find_pgbouncer() is not None else ()
    stack_config = replace(config.stack, proxy=ProxyKind.EMULATOR, extra_proxies=pgbouncer)
    try:
        with contextlib.ExitStack() as running:
            with console.status("Starting PostgreSQL, the AWS API emulator and the proxies..."):
                stack = running.enter_context(EmbeddedStack(stack_config))
            console.print(
                f"PostgreSQL {stack.postgres.binaries.version} with max_connections="
                f"{stack_config.max_connections}; pool size {stack_config.pool_size}; "
                f"{config.invocations} concurrent invocations, each {config.work_ms} ms of work; "
                f"execution environments: {config.init.replace('_', ' ')} Init."
            )
            if not pgbouncer:
                console.print(
                    "PgBouncer is not installed: its column is left out (apt-get install pgbouncer)."
                )
            progress = Progress(
                TextColumn("{task.description:<30}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            )
            with progress:
                ways = [
                    _burst_through(stack, stack.direct, "direct", config, progress),
                    _burst_through(stack, stack.proxy, "RDS Proxy emulator", config, progress),
                ]
                if pgbouncer:
                    ways.append(
                        _burst_through(
                            stack, stack.proxies[ProxyKind.PGBOUNCER], "PgBouncer", config, progress
                        )
                    )
    finally:
        logging.getLogger().removeHandler(handler_log)
        handler_log.close()
    console.print(results_table(ways))
    for way in ways:
        for error, count in way.burst.errors.most_common():
            console.print(f"  {way.name}: {count} x SQLSTATE {error}")
    write_chart(ways, config)
    console.print(f"Chart: {config.chart.resolve()}")
    return ways


def results_table(ways: list[Way]) -> Table:
    table = Table(title=f"The same burst, {len(ways)} ways")
    table.add_column("way")
    for column in (
        "invocations",
        "ok",
        "failed",
        "peak client conns",
        "peak DB conns",
        "pool cap",
        "borrow p50/p99",
        "pinned",
        "wall time",
    ):
        table.add_column(column, justify="right")
    for way in ways:
        borrow = (
            "-"
            if way.borrow_p50_us is None
            else f"{way.borrow_p50_us / 1000:.1f}/{(way.borrow_p99_us or 0) / 1000:.0f} ms"
        )
        table.add_row(
            way.name,
            str(way.burst.invocations),
            str(way.burst.succeeded),
            str(way.burst.failed),
            str(way.samples.peak_clients),
            str(way.samples.peak),
            "-" if way.pool_cap is None else str(way.pool_cap),
            borrow,
            "-" if way.pinned is None else str(way.pinned),
            f"{way.burst.wall_seconds:.1f} s",
        )
    return table


def write_chart(ways: list[Way], config: DemoConfig) -> None:
    import matplotlib  # noqa: PLC0415 - a heavy import only the chart needs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(ways), figsize=(6 * len(ways), 4), sharey=True, squeeze=False)
    for ax, way in zip(axes[0], ways, strict=True):
        if way.samples.clients:
            ax.step(
                way.samples.times[: len(way.samples.clients)],
                way.samples.clients,
                where="post",
                color="tab:orange",
                label="client connections (execution environments)",
            )
        ax.step(way.samples.times, way.samples.counts, where="post", label="database connections (app role)")
        ax.axhline(config.stack.max_connections, color="red", linestyle="--", label="max_connections")
        if way.pool_cap is not None:
            ax.axhline(way.pool_cap, color="green", linestyle=":", label="pool cap")
        ax.set_title(f"{way.name}: {way.burst.succeeded} ok, {way.burst.failed} failed")
        ax.legend(loc="center right", fontsize="x-small")
        ax.set_xlabel("seconds")
        # Hundreds of clients and a handful of database connections on one readable axis.
        ax.set_yscale("symlog", linthresh=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("connections")
    fig.suptitle(f"{config.invocations} concurrent Lambda invocations")
    fig.tight_layout()
    fig.savefig(config.chart, dpi=100)
    plt.close(fig)
