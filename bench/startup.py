"""Area 3, start-up: how long `python -m emulator up` (no Terraform) takes to be ready, and its parts.

Ready means the env file exists: `up` writes it once PostgreSQL, moto, the proxy and the Invoke API
all answer. Each run is a fresh `up` process, as each test session starts one.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.procs import REPO, bench_environment
from bench.report import Area, Figure, Table, at_most, progress
from bench.upcli import running_up

GOAL_SECONDS = 2.0


def run(runs: int) -> Area:
    area = Area("startup", "3. Start-up: `up` ready, without Terraform")
    times = []
    for number in range(1, runs + 1):
        with running_up() as up:
            times.append(up.ready_seconds)
        progress("startup", f"run {number}: ready in {up.ready_seconds:.2f} s")
    median = statistics.median(times)
    measure = f"`up` ready, median of {runs}" if runs > 1 else "`up` ready"
    area.figures.append(at_most(measure, median, GOAL_SECONDS, digits=2, unit=" s"))
    area.figures.append(Figure("runs", ", ".join(f"{t:.2f}" for t in times) + " s"))
    area.notes.append(
        "ready: from starting `python -m emulator up --env-file FILE` to FILE existing (Python's start, "
        "imports, PostgreSQL, moto, the proxy, the Invoke API); PostgreSQL's data directory is copied "
        "from the template in the user's cache, made by the first stack ever started here"
    )
    try:
        parts, ready = _parts()
    except (RuntimeError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        area.notes.append(f"the parts could not be timed: {type(exc).__name__}: {exc}")
        return area
    area.tables.append(_parts_table(parts, ready))
    area.notes.append(
        "parts: one more start of the same twin in a child process with the stack's steps timed "
        "(bench/startup_parts.py); 'from' is when a part began, counted from the process's spawn. "
        "moto's process starts before the imports and warms up beside them; the stack waits for it, "
        "makes the secret and launches the proxy on a thread beside PostgreSQL, so parts overlap"
    )
    return area


def _parts() -> tuple[list[dict[str, Any]], float]:
    spawned = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "bench.startup_parts", repr(spawned)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=bench_environment(),
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return list(result["parts"]), float(result["ready"])


def _parts_table(parts: list[dict[str, Any]], ready: float) -> Table:
    # Parts called more than once (a certificate per server) are added up, from their first start.
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        entry = merged.setdefault(part["label"], {"start": part["start"], "seconds": 0.0, "calls": 0})
        entry["start"] = min(entry["start"], part["start"])
        entry["seconds"] += part["seconds"]
        entry["calls"] += 1
    rows = [
        [label + (f" (x{e['calls']})" if e["calls"] > 1 else ""), f"{e['start']:.2f}", f"{e['seconds']:.2f}"]
        for label, e in sorted(merged.items(), key=lambda item: item[1]["start"])
    ]
    rows.append(["ready (env file written)", f"{ready:.2f}", ""])
    return Table(["part of `up`", "from (s)", "takes (s)"], rows)
