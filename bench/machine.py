"""What the figures were measured on: printed first, since every figure depends on it."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import resource
import subprocess
from collections.abc import Iterable
from pathlib import Path

import emulator
from bench.procs import REPO
from emulator.errors import ComponentError
from emulator.rdsproxy.main import how_it_runs
from emulator.stack.pgbouncer import find_pgbouncer
from emulator.stack.postgres import find_postgres_binaries

# The libraries whose speed the figures depend on (the event loop, moto, the AWS SDK, drivers).
# A one-minute load average above this many runnable processes per core means other work is running.
BUSY_LOAD_PER_CORE = 0.5
LIBRARIES = ("uvloop", "moto", "boto3", "psycopg", "psycopg2-binary", "psutil")


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def under_load() -> str | None:
    """A warning when the machine is busy with other work: such figures only show that things run."""
    cores = os.cpu_count() or 1
    one_minute = os.getloadavg()[0]
    if one_minute <= BUSY_LOAD_PER_CORE * cores:
        return None
    return (
        f"measured under load: the load average was {one_minute:.1f} on {cores} cores before the first "
        "area, so other work shared the CPUs; compare these figures with each other, not with a quiet run"
    )


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | str:
    """The finished command, or "unknown (why)" when it could not run."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"


def _command_output(argv: list[str]) -> str:
    done = _run(argv)
    return done if isinstance(done, str) else (done.stdout or done.stderr).strip()


def pgbench_binary() -> str:
    """The pgbench of the PostgreSQL the stack runs (`pg_config --bindir`), else the one on PATH."""
    try:
        bindir = find_postgres_binaries().bindir
    except ComponentError:
        return "pgbench"
    candidate = bindir / "pgbench"
    return str(candidate) if candidate.is_file() else "pgbench"


def pgbouncer_version() -> str | None:
    binary = find_pgbouncer()
    if binary is None:
        return None
    found = re.search(r"PgBouncer (\S+)", _command_output([binary, "--version"]))
    return found[1] if found else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        found = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    except OSError:
        return "unknown"
    return f"{int(found[1]) / 1024 / 1024:.1f} GiB" if found else "unknown"


def _package(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe() -> list[tuple[str, str]]:
    try:
        binaries = find_postgres_binaries()
        postgres = f"{binaries.version} ({binaries.source}: {binaries.bindir})"
    except ComponentError as exc:
        postgres = f"not found ({exc})"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", f"{os.cpu_count()} cores, {_cpu_model()}"),
        ("memory", _memory()),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("PostgreSQL", postgres),
        ("PgBouncer", pgbouncer_version() or "not installed"),
        ("pgbench", f"{_command_output([pgbench_binary(), '--version'])} ({pgbench_binary()})"),
        ("libraries", ", ".join(f"{name} {_package(name)}" for name in LIBRARIES)),
        ("RDS Proxy emulator", f"{how_it_runs()} ({Path(emulator.__file__).parent})"),
        ("open files", f"soft {soft}, hard {hard} (RLIMIT_NOFILE of this process)"),
        ("commit", _commit()),
        ("load average at start", load_average()),
    ]


def emulator_build(log_path: Path) -> str:
    """How a running emulator's per-message path runs, from its start-up line in its log: what was
    measured, whatever this process imports."""
    try:
        found = re.search(r" listening on \S+ \(stats on port \d+; (?P<build>[^)]+)\)", log_path.read_text())
    except OSError as exc:
        return f"unknown ({exc})"
    return found["build"] if found else f"unknown (no start-up line in {log_path})"


def builds_note(builds: Iterable[str]) -> str:
    """The note naming the builds the emulators under test reported (emulator_build), each once."""
    return f"the emulator under test: {' / '.join(sorted(set(builds)))} (its start-up line)"


def _commit() -> str:
    """The checkout's commit; a copy of the files (no .git) says so rather than git's error."""
    done = _run(["git", "-C", str(REPO), "log", "-1", "--format=%h (%cs)"])
    if isinstance(done, str):
        return done
    if done.returncode != 0 or not done.stdout.strip():
        return f"unknown ({REPO} is not a git checkout)"
    commit = done.stdout.strip()
    if _command_output(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]):
        commit += " with uncommitted changes"
    return commit
