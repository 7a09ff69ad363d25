"""Area 7, the work per transaction: the instructions each pooler runs in user mode per pgbench -S
transaction, counted by callgrind, for the emulator and for PgBouncer in front of the same
PostgreSQL.

Rates drift with the machine's speed and with how the processes share its cores (the throughput
area's figures move by a third within an hour here); an instruction count does not: the same code,
libraries and inputs give nearly the same count whatever else runs. It is the figure to compare two
commits by. One client, so that no batching of messages changes the work per transaction. Under
`valgrind --tool=callgrind`, pgbench runs WARM and then WARM + COUNT transactions, each run with its
login: the difference over COUNT is one transaction's work. The kernel's part (the socket reads and
writes, the same for both poolers: see the throughput area's CPU table) is not counted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import builds_note, emulator_build, pgbench_binary, pgbouncer_version
from bench.report import Area, Table, progress
from bench.throughput import MAX_CONNECTIONS, PLAIN, POOL, TLS, Endpoint, _initialise, _libpq_environment
from emulator.net import LOOPBACK
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.pgbouncer import PgBouncer
from emulator.stack.process import ManagedProcess
from emulator.stack.proxies import ProxyKind

WARM, COUNT = 200, 1000
# Python under valgrind starts in tens of seconds; a run of COUNT transactions takes a few more.
START_TIMEOUT, RUN_TIMEOUT = 300, 600


@dataclass(frozen=True)
class Row:
    protocol: str
    tls: bool = False

    @property
    def label(self) -> str:
        return self.protocol + ("+TLS" if self.tls else "")


ROWS = (Row("simple"), Row("extended"), Row("prepared"), Row("simple", tls=True))
EMULATOR, PGBOUNCER = "emulator", "PgBouncer"
# No work on a timer, whose share would grow with how long the run takes under valgrind: no metrics
# published, and the secret read again only when the database refuses it.
QUIET = {"publish_to_cloudwatch": False, "secret_refresh_seconds": 0}


def run(count: int = COUNT) -> Area:
    area = Area("instructions", "7. The work per transaction: instructions (callgrind), 1 client")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        area.error = "valgrind is needed to count instructions: apt-get install valgrind"
        return area
    bouncer_version = pgbouncer_version()
    config = StackConfig(
        proxy=ProxyKind.EMULATOR,
        extra_proxies=(ProxyKind.PGBOUNCER,) if bouncer_version else (),
        max_connections=MAX_CONNECTIONS,
        pool_size=POOL,
        proxy_settings=PLAIN,
        pgbouncer_server_tls=False,
    )
    counts: dict[tuple[Row, str], int] = {}
    with EmbeddedStack(config) as stack:
        progress("instructions", "pgbench -i -s 1")
        _initialise(stack, 1)
        found = stack.proxies.get(ProxyKind.PGBOUNCER)
        bouncer = found if isinstance(found, PgBouncer) else None
        counter = _Counter(stack, valgrind, bouncer)
        for row in ROWS:
            for pooler in (EMULATOR, PGBOUNCER):
                if pooler == PGBOUNCER and (bouncer is None or row.protocol == "prepared" or row.tls):
                    continue
                progress("instructions", f"{row.label}: {pooler} under callgrind")
                try:
                    counts[(row, pooler)] = counter.per_transaction(pooler, row, count)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    area.notes.append(f"{row.label}, {pooler}: not measured: {exc}")
        if counter.builds:
            area.notes.append(builds_note(counter.builds))
    _report(area, counts, count, bouncer_version)
    return area


@dataclass
class _Counter:
    """Runs a pooler under callgrind for one pgbench run, in front of the stack's PostgreSQL."""

    stack: EmbeddedStack
    valgrind: str
    bouncer: PgBouncer | None
    # The build each emulator reported at start-up.
    builds: list[str] = field(default_factory=list)

    def per_transaction(self, pooler: str, row: Row, count: int) -> int:
        """One transaction's instructions: two windows of WARM and WARM + count transactions, each
        with one login, differ by count transactions' work."""
        name = f"callgrind-{pooler.lower()}-{row.label.lower()}"
        if pooler == EMULATOR:
            warm, full = self._emulator(row, (WARM, WARM + count), name)
        else:
            # A C program counts the same in every process: one per window.
            warm, full = (self._pgbouncer(row, n, f"{name}-{n}") for n in (WARM, WARM + count))
        return (full - warm) // count

    def _emulator(self, row: Row, windows: tuple[int, int], name: str) -> tuple[int, int]:
        """The emulator's instructions over two pgbench runs, counted in one process (CPython's
        hashing and memory differ from process to process, and move the count by percents): after a
        warm-up run, callgrind's counters are zeroed, then dumped after each run (a dump zeroes them)."""
        emulator = self.stack.make_emulator({**(TLS if row.tls else PLAIN), **QUIET}, name=name)
        workdir = emulator.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config, ready, out = workdir / "proxy.json", workdir / "ready.json", workdir / "callgrind.out"
        config.write_text(emulator.config.to_json())
        argv = [self.valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m"]
        argv += ["emulator.rdsproxy", "--config", str(config), "--ready-file", str(ready)]
        process = ManagedProcess(
            "RDS Proxy emulator under callgrind",
            argv,
            log_path=emulator.log_path,
            env={**os.environ, **emulator.environment},
            stop_signal=signal.SIGTERM,
        )
        process.start()
        try:
            process.wait_ready(ready.exists, timeout=START_TIMEOUT)
            endpoint = Endpoint(LOOPBACK, int(json.loads(ready.read_text())["port"]), tls=row.tls)
            _pgbench(self.stack, endpoint, row, WARM)  # imports, caches, the pool's connection
            _callgrind_control("-z", process.pid)
            for transactions in windows:
                _pgbench(self.stack, endpoint, row, transactions)
                _callgrind_control("-d", process.pid)
        finally:
            process.stop(timeout=RUN_TIMEOUT)
        self.builds.append(emulator_build(emulator.log_path))
        first, second = (_total(out.with_name(f"{out.name}.{part}")) for part in (1, 2))
        return first, second

    def _pgbouncer(self, row: Row, transactions: int, name: str) -> int:
        """A second PgBouncer configured as the stack's, under callgrind."""
        running = self.bouncer
        assert running is not None
        (self.stack.workdir / name).mkdir()
        bouncer = PgBouncer(
            self.stack.workdir / name,
            running.target,
            pool_size=POOL,
            user=running.user,
            certificate=None,
            server_tls=False,
        )
        ini = bouncer._write_config()  # the kit's own configuration, run by another program
        out = bouncer.workdir / "callgrind.out"  # in its directory, which its user may write
        process = ManagedProcess(
            "PgBouncer under callgrind",
            [self.valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", bouncer.binary, str(ini)],
            log_path=bouncer.workdir / "pgbouncer.log",
            user=running.user,
            stop_signal=signal.SIGTERM,
        )
        process.start()
        try:
            process.wait_ready(bouncer._ready, timeout=START_TIMEOUT)  # its own probe: a login and SELECT 1
            _pgbench(self.stack, Endpoint(LOOPBACK, bouncer.port, tls=False), row, transactions)
        finally:
            process.stop(timeout=RUN_TIMEOUT)
        return _total(out)


def _callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, check=True, timeout=120)


def _pgbench(stack: EmbeddedStack, endpoint: Endpoint, row: Row, transactions: int) -> None:
    argv = [pgbench_binary(), "-n", "-S", "-M", row.protocol, "-c", "1", "-t", str(transactions)]
    env = _libpq_environment(stack, endpoint)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    if done.returncode != 0 or f"actually processed: {transactions}/" not in done.stdout:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise RuntimeError(f"pgbench exited {done.returncode}: {' / '.join(last)}")


def _total(out: Path) -> int:
    """The instructions callgrind counted over the whole process (its totals line)."""
    for line in out.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"callgrind wrote no totals to {out}")


def _report(area: Area, counts: dict[tuple[Row, str], int], count: int, bouncer_version: str | None) -> None:
    table = Table(["instructions/txn", "emulator", "PgBouncer", "emu/PgB"])
    for row in ROWS:
        emulator, bouncer = counts.get((row, EMULATOR)), counts.get((row, PGBOUNCER))
        ratio = f"{emulator / bouncer:.1f}" if emulator and bouncer else "-"
        bouncer_cell = (
            "n/a" if row.protocol == "prepared" or row.tls else (f"{bouncer:,}" if bouncer else "-")
        )
        table.rows.append([row.label, f"{emulator:,}" if emulator else "-", bouncer_cell, ratio])
    table.title = "each pooler's user-mode instructions per transaction (lower is better)"
    area.tables.append(table)
    area.notes += [
        f"pgbench -n -S, 1 client, under callgrind: runs of {WARM} and of {WARM + count} transactions, "
        f"each with its login; their difference over {count} is one transaction's work. The emulator "
        "counts both runs in one process, after a warm-up run; PgBouncer, whose count repeats exactly, "
        "one process per run. Repeated, an emulator's figure moves by a few tenths of a percent "
        "whatever the machine's load: the figure to compare commits by. The kernel's part is not counted",
        "n/a: PgBouncer is not run for prepared (1.18 cannot multiplex named statements) nor over TLS"
        + ("" if bouncer_version else "; and no PgBouncer was found at all"),
    ]
