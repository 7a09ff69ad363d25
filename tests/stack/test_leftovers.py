"""A killed stack's servers stop by themselves, and its directory is removed by the next stack."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from emulator.errors import ComponentError
from emulator.stack import leftovers
from emulator.stack.process import ManagedProcess, with_death_signal
from emulator.wait import wait_until


def _claimed_by_a_process_that_has_ended(parent: Path) -> Path:
    code = f"import tempfile; tempfile.tempdir = {str(parent)!r}; from emulator.stack import leftovers; "
    code += "print(leftovers.make_workdir())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def test_the_directory_of_a_stack_whose_process_ended_is_swept(tmp_path: Path) -> None:
    abandoned = _claimed_by_a_process_that_has_ended(tmp_path)
    (abandoned / "pgdata").mkdir()
    assert leftovers.sweep(tmp_path) == [abandoned]
    assert not abandoned.exists()


def test_the_directory_of_a_running_stack_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    mine = leftovers.make_workdir()
    assert leftovers.sweep(tmp_path) == []
    assert mine.exists()


def test_the_directory_of_a_running_stack_is_kept_when_the_clock_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NTP nudged the wall clock across a second: the kernel's boot time (whole seconds, derived from
    # the wall clock) moved by one, and every create_time() with it. A CI run lost its session's
    # stack to a sweep that compared create_time() to 0.01 s.
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    mine = leftovers.make_workdir()
    boot_time, create_time = psutil.boot_time, psutil.Process.create_time
    monkeypatch.setattr(psutil, "boot_time", lambda: boot_time() + 1.0)
    monkeypatch.setattr(psutil.Process, "create_time", lambda process: create_time(process) + 1.0)

    assert leftovers.sweep(tmp_path) == []
    assert mine.exists()


@pytest.mark.parametrize("written_by", ["this kit", "an older kit"])
def test_a_reused_pid_does_not_keep_an_abandoned_directory(tmp_path: Path, written_by: str) -> None:
    # The owner's pid now names another process (this one): its start time tells them apart.
    abandoned = tmp_path / f"{leftovers.PREFIX}reused"
    abandoned.mkdir()
    me = psutil.Process()
    owner = {"pid": me.pid, "started": me.create_time() - 60}
    if written_by == "this kit":
        owner["since_boot"] = me.create_time() - psutil.boot_time() - 60
    (abandoned / leftovers.OWNER_FILE).write_text(json.dumps(owner))
    assert leftovers.sweep(tmp_path) == [abandoned]


def test_a_directory_whose_owner_cannot_be_told_is_kept(tmp_path: Path) -> None:
    # Being made by another process right now (no owner file yet), or not a stack's at all.
    unknown = tmp_path / f"{leftovers.PREFIX}unknown"
    unknown.mkdir()
    (tmp_path / f"{leftovers.PREFIX}terraform-1.log").write_text("not a directory")
    assert leftovers.sweep(tmp_path) == []
    assert unknown.exists()


@pytest.mark.skipif(with_death_signal(["x"], signal.SIGTERM) == ["x"], reason="no setpriv (util-linux)")
def test_a_server_gets_its_stop_signal_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    # The kit's process (a child here) starts a server from a short-lived thread, as the cluster
    # starts replicas, and is killed with SIGKILL: the server must still end, with its stop signal.
    marker = tmp_path / "stopped"
    server = textwrap.dedent(
        f"""
        import signal, sys, time
        signal.signal(signal.SIGINT, lambda *_: (open({str(marker)!r}, "w").write("SIGINT"), sys.exit(0)))
        print("ready", flush=True)
        time.sleep(120)
        """
    )
    kit = textwrap.dedent(
        f"""
        import signal, sys, threading, time
        from pathlib import Path
        from emulator.stack.process import ManagedProcess
        server = ManagedProcess("server", [sys.executable, "-c", {server!r}],
                                log_path=Path({str(tmp_path / "server.log")!r}), stop_signal=signal.SIGINT)
        starter = threading.Thread(target=server.start)
        starter.start(); starter.join()
        print(server.pid, flush=True)
        time.sleep(120)
        """
    )
    kit_process = subprocess.Popen([sys.executable, "-c", kit], stdout=subprocess.PIPE, text=True)
    try:
        assert kit_process.stdout is not None
        server_pid = int(kit_process.stdout.readline())
        wait_until(
            lambda: "ready" in (tmp_path / "server.log").read_text(), component="the server", timeout=30
        )
        assert psutil.pid_exists(server_pid)  # the starting thread's end did not stop it
    finally:
        kit_process.kill()
        kit_process.wait(10)
        if kit_process.stdout is not None:
            kit_process.stdout.close()
    wait_until(marker.exists, component="the server's stop", timeout=30)
    assert marker.read_text() == "SIGINT"


def test_a_missing_program_is_still_popens_file_not_found(tmp_path: Path) -> None:
    process = ManagedProcess("nothing", ["no-such-program-here"], log_path=tmp_path / "log")
    with pytest.raises(ComponentError, match="could not start no-such-program-here"):
        process.start()
