"""Fixtures the stack's tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator.stack.moto import AwsEmulator


@pytest.fixture
def aws() -> Iterator[AwsEmulator]:
    """A moto process of the test's own, as a stack starts it."""
    emulator = AwsEmulator()
    emulator.start()
    yield emulator
    emulator.stop()
