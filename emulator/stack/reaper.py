"""What the kit started goes when the kit's process goes, however it goes (testcontainers' Ryuk, for
plain processes): `python -m emulator.stack.reaper`, one per kit process, started with the first
server.

The kit tells it, one JSON object per line on the reaper's stdin, which servers it started and which
files and directories it will remove, and which it has stopped or removed itself since. stdin is the
reaper's lifeline: when the kit's process ends, even by SIGKILL, the kernel closes the pipe and the
reaper stops what is still listed (each server's stop signal to its process group, SIGKILL at the
deadline, as ManagedProcess.stop does), removes what is still listed, and exits. After a normal stop
nothing is listed and it just exits.

A death signal set in each server (PR_SET_PDEATHSIG) would not do: it fires when the *thread* that
started the server ends (the cluster starts replicas from short-lived threads), and it cannot remove
the data directory. The reaper runs in a session of its own, so a terminal's Ctrl+C, meant for the
kit, does not reach it; it imports nothing of the kit's, so it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

# How long a server has to stop on its stop signal before its process group is killed (as in
# ManagedProcess.stop).
STOP_SECONDS = 10.0


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat, field 22): with the pid it
    names one process, so a pid reused after the server ended is never signalled. "" when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
    return stat.rsplit(")", 1)[1].split()[19]


class _Lifeline:
    """The kit's side: the reaper's process and the pipe to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._popen: subprocess.Popen[bytes] | None = None

    def _send(self, message: dict[str, Any]) -> None:
        with self._lock:
            if self._popen is None:
                self._popen = subprocess.Popen(
                    [sys.executable, "-m", "emulator.stack.reaper"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    # Its own session: a terminal's Ctrl+C (to the kit's process group) is not for it.
                    start_new_session=True,
                )
            pipe: IO[bytes] | None = self._popen.stdin
            assert pipe is not None
            # A reaper that is gone (killed by hand) only costs the cleanup after a SIGKILL.
            with contextlib.suppress(BrokenPipeError, ValueError):
                pipe.write(json.dumps(message).encode() + b"\n")
                pipe.flush()

    def watch_process(self, pid: int, stop_signal: signal.Signals) -> None:
        self._send(
            {
                "op": "process",
                "pid": pid,
                "start": start_time(pid),
                "signal": int(stop_signal),
                "seconds": STOP_SECONDS,
            }
        )

    def forget_process(self, pid: int) -> None:
        self._send({"op": "forget-process", "pid": pid})

    def remove_path(self, path: Path) -> None:
        self._send({"op": "path", "path": str(path)})

    def forget_path(self, path: Path) -> None:
        self._send({"op": "forget-path", "path": str(path)})

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None


_lifeline = _Lifeline()


def watch_process(pid: int, stop_signal: signal.Signals) -> None:
    """Stop this server (its process group, with stop_signal) should the kit's process die first."""
    _lifeline.watch_process(pid, stop_signal)


def forget_process(pid: int) -> None:
    """The kit stopped this server itself."""
    _lifeline.forget_process(pid)


def remove_path(path: Path) -> None:
    """Remove this file or directory tree should the kit's process die before it does."""
    _lifeline.remove_path(path)


def forget_path(path: Path) -> None:
    """The kit removed this path itself (or keeps it)."""
    _lifeline.forget_path(path)


def reaper_pid() -> int | None:
    """The reaper's process id, once one was started (tests)."""
    return _lifeline.pid


# The reaper's side.


def _alive(pid: int, start: str) -> bool:
    """Whether the process is still the one the kit started, and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] != "Z" and (not start or fields[19] == start)


@dataclasses.dataclass(frozen=True)
class _Server:
    start: str
    signal: int
    seconds: float


def _stop(servers: dict[int, _Server]) -> None:
    """Each server's stop signal to its process group (its own session: pid is the group's id), all at
    once; SIGKILL to the groups of those still running at their deadline."""
    now = time.monotonic()
    running = {pid: now + server.seconds for pid, server in servers.items() if _alive(pid, server.start)}
    for pid in running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, servers[pid].signal)
    while running:
        now = time.monotonic()
        for pid, deadline in list(running.items()):
            if not _alive(pid, servers[pid].start):
                del running[pid]
            elif now >= deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                del running[pid]
        time.sleep(0.02)


def _remove(paths: list[str]) -> None:
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def main() -> None:
    servers: dict[int, _Server] = {}
    paths: dict[str, None] = {}
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue  # the end of a line the kit was writing when it was killed
        op = message["op"]
        if op == "process":
            servers[int(message["pid"])] = _Server(
                str(message["start"]), int(message["signal"]), float(message.get("seconds", STOP_SECONDS))
            )
        elif op == "forget-process":
            servers.pop(int(message["pid"]), None)
        elif op == "path":
            paths[str(message["path"])] = None
        elif op == "forget-path":
            paths.pop(str(message["path"]), None)
    # The kit's process is gone (or closed the pipe): stop what it did not, then remove what it left,
    # newest first (a file inside a directory listed before it goes with the directory).
    _stop(servers)
    _remove(list(reversed(paths)))


if __name__ == "__main__":
    main()
