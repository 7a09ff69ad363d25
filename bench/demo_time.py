"""Area 6, the demo: `python -m emulator demo` (the same burst directly, through the emulator and
through PgBouncer) timed from the command's start to its end, as a user waits for it.

Its results must stay what they are: the command exits 0 only when no invocation failed other than
by PostgreSQL refusing connections directly, which is what the demo sets out to show.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import bench_environment, stop_process_tree
from bench.report import Area, Figure, Table, at_most, progress, unjudged

GOAL_SECONDS = 30.0
GOAL_INVOCATIONS = 500
# Rows of the demo's results table: a way's name, then ok, failed, ..., wall seconds last.
_ROW = re.compile(r"^\s*(direct|RDS Proxy emulator|PgBouncer)\s+(\d+)\s+(\d+)\s.*?([\d.]+)\s*$")


def run(invocations: int) -> Area:
    area = Area("demo", f"6. The demo: {invocations} invocations, three ways")
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as name:
        workdir = Path(name)
        argv = [sys.executable, "-m", "emulator", "demo", "--invocations", str(invocations)]
        argv += ["--chart", str(workdir / "chart.png"), "--handler-log", str(workdir / "handler.log")]
        output = workdir / "demo.out"
        with output.open("wb") as sink:
            started = time.monotonic()
            popen = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, cwd=workdir, env=bench_environment()
            )
            try:
                _wait(popen, started)
            finally:
                stop_process_tree(popen, 10)
            wall = time.monotonic() - started
        text = output.read_text(errors="replace")
    figure = at_most(f"demo wall time, {invocations} invocations", wall, GOAL_SECONDS, unit=" s")
    if invocations != GOAL_INVOCATIONS:
        figure, why = unjudged(figure, f"the goal is for {GOAL_INVOCATIONS} invocations")
        area.notes.append(why)
    area.figures.append(figure)
    area.figures.append(
        Figure("exit status (0: results as expected)", str(popen.returncode), "0", popen.returncode == 0)
    )
    rows = [[m[1], m[2], m[3], m[4]] for m in map(_ROW.match, text.splitlines()) if m]
    if rows:
        area.tables.append(Table(["way", "ok", "failed", "burst (s)"], rows))
    else:
        area.notes.append("the demo's results table was not found in its output")
    area.notes.append(
        "wall time: from starting `python -m emulator demo` to its exit (the stack's start, three "
        "bursts, the chart); burst: each way's own wall time, from the demo's table"
    )
    if popen.returncode != 0:
        area.notes.append("the demo's output ends: " + " / ".join(text.strip().splitlines()[-5:]))
    return area


def _wait(popen: subprocess.Popen[bytes], started: float, limit: float = 300) -> None:
    """Until the demo exits, with a progress line every 10 s; TimeoutError past `limit`."""
    next_report = started + 10
    while popen.poll() is None:
        now = time.monotonic()
        if now - started > limit:
            raise TimeoutError(f"the demo did not end within {limit:.0f} s")
        if now >= next_report:
            progress("demo", f"running for {now - started:.0f} s")
            next_report += 10
        time.sleep(0.02)
