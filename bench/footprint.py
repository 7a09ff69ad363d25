"""Area 4, footprint: the resident memory of an idle stack (`up`, no Terraform), by process.

The idle stack is `up` right after it is ready plus a moment to settle, before any invocation
(Lambda's forkserver and environments start with the first one). Every process of `up`'s tree is
counted: `up` itself (the Invoke API runs in it), moto's process, PostgreSQL's processes, the
proxy's, and whatever else it started.
"""

from __future__ import annotations

import time
from collections import defaultdict

import psutil

from bench.procs import memory_kb
from bench.report import Area, Figure, Table, at_most
from bench.upcli import running_up

GOAL_MB = 250.0
SETTLE_SECONDS = 2.0


def _role(process: psutil.Process, up_pid: int) -> str:
    if process.pid == up_pid:
        return "up (CLI, Invoke API)"
    try:
        cmdline = " ".join(process.cmdline())
        name = process.name()
    except psutil.Error:
        return "(gone)"
    if "emulator.stack.moto_server" in cmdline:
        return "moto (AWS API emulator)"
    if "emulator.rdsproxy" in cmdline:
        return "RDS Proxy emulator"
    if name.startswith(("postgres", "postmaster")):
        return "PostgreSQL"
    if "forkserver" in cmdline:
        return "Lambda forkserver"
    if "resource_tracker" in cmdline:
        return "multiprocessing tracker"
    return name


def run() -> Area:
    area = Area("footprint", "4. Footprint: the idle stack's resident memory")
    with running_up() as up:
        time.sleep(SETTLE_SECONDS)
        processes = [up.process, *up.process.children(recursive=True)]
        rss: dict[str, int] = defaultdict(int)
        pss: dict[str, int] = defaultdict(int)
        count: dict[str, int] = defaultdict(int)
        pss_known = True
        for process in processes:
            try:
                resident, proportional = memory_kb(process.pid)
            except psutil.Error:
                continue
            role = _role(process, up.process.pid)
            rss[role] += resident
            count[role] += 1
            if proportional is None:
                pss_known = False
            else:
                pss[role] += proportional
    rows = [
        [role, str(count[role]), f"{rss[role] / 1024:.1f}", f"{pss[role] / 1024:.1f}" if pss_known else "-"]
        for role in sorted(rss, key=lambda r: -rss[r])
    ]
    total_rss = sum(rss.values()) / 1024
    total_pss = sum(pss.values()) / 1024
    rows.append(
        ["total", str(sum(count.values())), f"{total_rss:.1f}", f"{total_pss:.1f}" if pss_known else "-"]
    )
    area.tables.append(Table(["process", "count", "RSS (MB)", "PSS (MB)"], rows))
    area.figures.append(at_most("idle stack, RSS summed", total_rss, GOAL_MB, unit=" MB"))
    if pss_known:
        area.figures.append(Figure("idle stack, PSS summed", f"{total_pss:.1f} MB"))
    area.notes.append(
        f"measured {SETTLE_SECONDS:.0f} s after `up` was ready, before any invocation. RSS summed counts "
        "pages shared between processes (PostgreSQL's shared memory, libraries) once per process, as "
        "the issue's 510 MB did; PSS splits each shared page among its users, so it adds up to what "
        "the stack really holds"
    )
    return area
