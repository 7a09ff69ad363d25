"""Processes the benchmark starts or measures: memory, open-file limits, line-based talk, stopping."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent


def bench_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child `python -m bench.X` or `python -m emulator ...` of this checkout."""
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""),
        **(extra or {}),
    }


def memory_kb(pid: int) -> tuple[int, int | None]:
    """Resident and proportional (shared pages split among their users) memory, in kB."""
    process = psutil.Process(pid)
    try:
        full = process.memory_full_info()
    except psutil.AccessDenied:
        return process.memory_info().rss // 1024, None
    return full.rss // 1024, getattr(full, "pss", 0) // 1024 or None


def cpu_seconds(pid: int) -> tuple[float, float]:
    """A process's (user, system) CPU time so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user, times.system


def open_files_limit(pid: int) -> tuple[int, int] | None:
    """The process's RLIMIT_NOFILE (soft, hard), from /proc."""
    try:
        text = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return None
    found = re.search(r"Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)", text)
    if found is None:
        return None
    values = [resource.RLIM_INFINITY if v == "unlimited" else int(v) for v in found.groups()]
    return values[0], values[1]


def raise_open_files_limit(wanted: int) -> tuple[int, int, str]:
    """Raise this process's soft limit towards `wanted` (children inherit it); (soft, hard, message)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft, hard, ""
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            # Root (CAP_SYS_RESOURCE) may raise the hard limit too; elsewhere this is refused.
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted, wanted, ""
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    message = (
        ""
        if target >= wanted
        else f"RLIMIT_NOFILE: wanted {wanted} open files, the hard limit is {hard} and cannot be raised "
        f"here (raise it with `ulimit -Hn` as root, or in /etc/security/limits.conf)"
    )
    return target, hard, message


class Child:
    """A `python -m bench.X` child that talks JSON lines: orders on stdin, events on stdout."""

    def __init__(
        self, module: str, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None
    ) -> None:
        self.module = module
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=bench_environment(env),
        )
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read_events, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read_events(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with contextlib.suppress(ValueError):
                self._events.put(json.loads(line))
        self._events.put(None)

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self._stderr = [*self._stderr[-30:], line.rstrip()]

    def stderr_tail(self, lines: int = 8) -> str:
        return "\n".join(self._stderr[-lines:])

    def send(self, order: Mapping[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(order) + "\n")
        self.popen.stdin.flush()

    def event(self, timeout: float) -> dict[str, Any]:
        """The next event; RuntimeError when the child ended or said nothing in time."""
        event = self.next_event(timeout)
        if event is None:
            raise RuntimeError(f"{self.module} said nothing for {timeout:.0f} s")
        return event

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None when there was none in time; RuntimeError when the child ended."""
        try:
            event = self._events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if event is None:
            # Seen once: the child's end is reported to every later call too.
            self._events.put(None)
            self.popen.wait(10)
            raise RuntimeError(f"{self.module} exited ({self.popen.returncode}) early:\n{self.stderr_tail()}")
        return event

    def stop(self, timeout: float = 60) -> None:
        """Close its stdin (its order to stop), wait, and end it and its children if it does not stop."""
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        stop_process_tree(self.popen, timeout)


def stop_process_tree(popen: subprocess.Popen[Any], timeout: float, *, first: int | None = None) -> None:
    """Wait for a child (after sending `first`), then kill it and every process it started, by pid."""
    try:
        descendants = psutil.Process(popen.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    if first is not None and popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, first)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, signal.SIGKILL)
        popen.wait(10)
    # The stack's servers run in process groups of their own: a killed parent would leave them behind.
    _, alive = psutil.wait_procs(descendants, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
