"""`python -m emulator up` run as users run it: a child process, ready when its env file appears.

Start-up, footprint and invoke latency all measure the public command line, not the stack's
classes: what a user's test session pays includes the interpreter's start and the CLI's imports.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.procs import REPO, bench_environment, stop_process_tree
from emulator.stack.envfile import parse_env

# `up` without Terraform is ready in seconds; a minute means something is wrong, not slow.
READY_TIMEOUT = 120


@dataclass(frozen=True)
class RunningUp:
    process: psutil.Process
    # From the child's start to its env file (written once everything is ready), in seconds.
    ready_seconds: float
    env: dict[str, str]
    workdir: Path


@contextlib.contextmanager
def running_up(args: Sequence[str] = (), *, timeout: float = READY_TIMEOUT) -> Iterator[RunningUp]:
    """`python -m emulator up --env-file FILE [args]`, until the block ends; then SIGINT, as Ctrl+C."""
    with tempfile.TemporaryDirectory(prefix="bench-up-") as name:
        workdir = Path(name)
        env_file, log_path = workdir / "stack.env", workdir / "up.log"
        argv = [sys.executable, "-m", "emulator", "up", "--env-file", str(env_file), *args]
        with log_path.open("wb") as log:
            started = time.monotonic()
            popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=bench_environment(),
            )
        try:
            ready = _wait_ready(popen, env_file, log_path, started, timeout)
            yield RunningUp(psutil.Process(popen.pid), ready, parse_env(env_file.read_text()), workdir)
        finally:
            stop_process_tree(popen, 60, first=signal.SIGINT)


def _wait_ready(
    popen: subprocess.Popen[bytes], env_file: Path, log: Path, started: float, timeout: float
) -> float:
    # A tight poll: the figure is the ready time, and a 10 ms step would be 0.5 % of the goal.
    while not env_file.exists():
        if popen.poll() is not None:
            raise RuntimeError(f"`up` exited ({popen.returncode}) before it was ready:\n{_tail(log)}")
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"`up` was not ready after {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.002)
    return time.monotonic() - started


def _tail(log: Path, lines: int = 12) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""
