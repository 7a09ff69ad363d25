"""How the plugin's twins meet SIGTERM: as Ctrl+C while any twin runs, whatever order they stop in."""

from __future__ import annotations

import signal

import pytest

from emulator.pytest_plugin.factory import _sigterm_interrupts, merged

pytestmark = pytest.mark.unit


def test_sigterm_interrupts_until_the_last_twin_stops_whatever_the_order() -> None:
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    function_twin, session_twin = _sigterm_interrupts(), _sigterm_interrupts()
    try:
        function_twin.__enter__()
        session_twin.__enter__()
        function_twin.__exit__(None, None, None)  # the function's twin stops first, though it started first
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            signal.raise_signal(signal.SIGTERM)
        session_twin.__exit__(None, None, None)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_someone_else_s_sigterm_handler_is_left_alone() -> None:
    def theirs(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("theirs")

    previous = signal.signal(signal.SIGTERM, theirs)
    try:
        with _sigterm_interrupts():
            assert signal.getsignal(signal.SIGTERM) is theirs
        assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_factory_s_options_go_on_top_of_the_configured_ones_mappings_name_by_name() -> None:
    configured = {
        "handler": "orders.handler",
        "env": {"STAGE": "test", "DB_HOST": "x"},
        "max_connections": 20,
    }
    overrides = {"env": {"STAGE": "load"}, "max_connections": 40, "pool_size": 3}
    assert merged(configured, overrides) == {
        "handler": "orders.handler",
        "env": {"STAGE": "load", "DB_HOST": "x"},
        "max_connections": 40,
        "pool_size": 3,
    }
