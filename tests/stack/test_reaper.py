"""The reaper: what the kit lists when its process dies is stopped and removed; nothing else is."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.stack.reaper import start_time


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def _sleeper(started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    started.append(process)
    return process


def _reap(messages: list[dict[str, object]]) -> None:
    """A reaper told messages, whose kit then goes (its end of the pipe closes)."""
    reaper = subprocess.Popen([sys.executable, "-m", "emulator.stack.reaper"], stdin=subprocess.PIPE)
    assert reaper.stdin is not None
    for message in messages:
        reaper.stdin.write(json.dumps(message).encode() + b"\n")
    # The end of a line the kit was writing when it was killed is ignored.
    reaper.stdin.write(b'{"op": "path", "pa')
    reaper.stdin.close()
    assert reaper.wait(30) == 0


def test_listed_servers_are_stopped_and_listed_paths_removed(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    listed, forgotten = _sleeper(sleepers), _sleeper(sleepers)
    directory, file, kept = tmp_path / "stack", tmp_path / "stack.env", tmp_path / "kept"
    (directory / "pgdata").mkdir(parents=True)
    (directory / "pgdata" / "PG_VERSION").write_text("15\n")
    file.write_text("PGPORT=1\n")
    kept.mkdir()
    _reap(
        [
            {"op": "process", "pid": pid, "start": start_time(pid), "signal": int(signal.SIGTERM)}
            for pid in (listed.pid, forgotten.pid)
        ]
        + [
            {"op": "forget-process", "pid": forgotten.pid},
            {"op": "path", "path": str(directory)},
            {"op": "path", "path": str(file)},
            {"op": "path", "path": str(kept)},
            {"op": "forget-path", "path": str(kept)},
        ]
    )
    assert listed.wait(5) == -signal.SIGTERM
    assert forgotten.poll() is None
    assert not directory.exists()
    assert not file.exists()
    assert kept.exists()


def test_a_pid_now_of_another_process_is_not_signalled(sleepers: list[subprocess.Popen[bytes]]) -> None:
    """The listed start time is not this process's: the pid was reused after the server ended."""
    other = _sleeper(sleepers)
    start = int(start_time(other.pid))
    _reap([{"op": "process", "pid": other.pid, "start": str(start - 1), "signal": int(signal.SIGKILL)}])
    assert other.poll() is None


def test_a_server_that_ignores_its_stop_signal_is_killed_at_the_deadline(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    sleepers.append(stubborn)
    assert stubborn.stdout is not None
    assert stubborn.stdout.readline() == b"ready\n"
    _reap(
        [
            {
                "op": "process",
                "pid": stubborn.pid,
                "start": start_time(stubborn.pid),
                "signal": int(signal.SIGTERM),
                "seconds": 0.5,
            }
        ]
    )
    assert stubborn.wait(5) == -signal.SIGKILL
