"""How a snapshot function learns its environments' exit codes: the template writes one record per
reaped environment into a pipe, and every thread waiting for one reads from it in turn."""

from __future__ import annotations

import multiprocessing
import os
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import emulator.awslambda.function as function_module
from emulator.awslambda.function import _Snapshot
from emulator.awslambda.spec import EXIT_RECORD
from emulator.wait import wait_until

pytestmark = pytest.mark.unit


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_Snapshot, Any]]:
    """A snapshot function's report pipe, with the template's end in the test's hands."""
    # Long enough that a reader waiting for it all is caught by the test's own deadlines.
    monkeypatch.setattr(function_module, "EXIT_REPORT_SECONDS", 60.0)
    snapshot = object.__new__(_Snapshot)  # the pipe and its reader only: no template process
    reading, writing = multiprocessing.Pipe(duplex=False)
    snapshot._statuses = reading
    snapshot._status_lock = threading.Lock()
    snapshot._exited = {}
    yield snapshot, writing
    writing.close()
    reading.close()


def _waiting_for(snapshot: _Snapshot, pid: int) -> tuple[threading.Thread, list[int | None]]:
    got: list[int | None] = []
    thread = threading.Thread(target=lambda: got.append(snapshot._exit_status(pid)), daemon=True)
    thread.start()
    return thread, got


def test_an_exit_code_reaches_its_waiter_while_another_waits_for_a_report_not_yet_written(
    reports: tuple[_Snapshot, Any],
) -> None:
    snapshot, template = reports
    first, first_got = _waiting_for(snapshot, 101)
    wait_until(snapshot._status_lock.locked, component="the first waiter at the pipe", timeout=5)
    second, second_got = _waiting_for(snapshot, 202)
    os.write(template.fileno(), struct.pack(EXIT_RECORD, 202, 3))
    wait_until(lambda: second_got == [3], component="the second waiter's exit code", timeout=5)
    assert first.is_alive()
    os.write(template.fileno(), struct.pack(EXIT_RECORD, 101, 0))
    wait_until(lambda: first_got == [0], component="the first waiter's exit code", timeout=5)
    second.join(5)


def test_every_waiter_gets_none_at_once_when_the_template_is_gone(reports: tuple[_Snapshot, Any]) -> None:
    snapshot, template = reports
    waiters = [_waiting_for(snapshot, pid) for pid in (1, 2)]
    template.close()  # the template exited: the pipe ends
    for _, got in waiters:
        wait_until(lambda got=got: got == [None], component="a waiter's answer", timeout=5)
