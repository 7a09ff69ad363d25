from __future__ import annotations

import time

import pytest

from emulator.errors import ReadinessTimeout
from emulator.wait import wait_until

pytestmark = pytest.mark.unit


def test_returns_as_soon_as_the_probe_says_yes() -> None:
    calls = iter([False, False, True])
    took = wait_until(lambda: next(calls), component="thing", timeout=5)
    assert took < 1


def test_the_deadline_error_names_the_part_and_the_last_failure() -> None:
    def probe() -> bool:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(ReadinessTimeout) as caught:
        wait_until(probe, component="PostgreSQL", timeout=0.2, hint="apt-get install postgresql")
    message = str(caught.value)
    assert message.startswith("PostgreSQL: not ready after 0 s")
    assert "ConnectionRefusedError: nobody home" in message
    assert "how to fix: apt-get install postgresql" in message


def test_a_dead_process_fails_at_once_not_at_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(ReadinessTimeout, match="exited before it was ready: exit status 1"):
        wait_until(lambda: False, component="PgBouncer", timeout=30, alive=lambda: "exit status 1")
    assert time.monotonic() - started < 5
