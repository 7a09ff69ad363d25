"""The temporary directories of stacks whose process was killed: claimed by their owner, swept by
the next stack.

A stack's directory (its PostgreSQL data, certificates, logs) is removed by the stack when it stops.
A process killed with SIGKILL cannot do that; its servers stop by themselves (process.py's
parent-death signal), its directory stays. Each directory names its owner (pid and start time, so a
reused pid is not mistaken for it), and every stack that starts removes the directories whose owner
is gone, as pytest removes old base temporary directories.

The start time is counted from the machine's boot. psutil's create_time() is that plus the boot time,
which the kernel derives from the wall clock in whole seconds: it moves by a second when NTP nudges
the clock across one, and a stack starting then took a running stack's owner for gone and removed
its directory (PostgreSQL's data included) under it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import psutil

PREFIX = "local-twin-"
OWNER_FILE = "owner.json"
# Two readings of one process's start differ by at most the second the boot time may move between
# the two reads of /proc/stat that each takes; a reused pid started that close is not a real case.
_SAME_START = 1.5


def _since_boot(process: psutil.Process) -> float:
    """When the process started, in seconds since the machine booted: not moved by clock changes."""
    return process.create_time() - psutil.boot_time()


def make_workdir() -> Path:
    """A new stack directory, claimed by this process."""
    workdir = Path(tempfile.mkdtemp(prefix=PREFIX))
    me = psutil.Process()
    owner = {"pid": me.pid, "started": me.create_time(), "since_boot": _since_boot(me)}
    (workdir / OWNER_FILE).write_text(json.dumps(owner))
    return workdir


def _owner_alive(workdir: Path) -> bool:
    """Whether the process that claimed it still runs; True when that cannot be told (a directory
    being made, or not a stack's): only what is known to be abandoned is removed."""
    try:
        owner = json.loads((workdir / OWNER_FILE).read_text())
        process = psutil.Process(int(owner["pid"]))
        if "since_boot" in owner:
            return abs(_since_boot(process) - float(owner["since_boot"])) < _SAME_START
        # Claimed by an older kit: only its wall-clock start, read with the same tolerance.
        return bool(abs(process.create_time() - float(owner["started"])) < _SAME_START)
    except psutil.NoSuchProcess:
        return False
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return True


def sweep(parent: Path | None = None) -> list[Path]:
    """Remove the stack directories whose owner process is gone; the ones removed."""
    removed = []
    for workdir in Path(parent or tempfile.gettempdir()).glob(PREFIX + "*"):
        if workdir.is_dir() and not workdir.is_symlink() and not _owner_alive(workdir):
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)
                removed.append(workdir)
    return removed
