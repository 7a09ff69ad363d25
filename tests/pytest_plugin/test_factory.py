"""How the plugin's twins meet SIGTERM and SIGHUP: as Ctrl+C while any twin runs, whatever order
they stop in; an ignored SIGHUP (nohup) stays ignored."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import pytest

from emulator.pytest_plugin.factory import _interrupts_wait, _signals_interrupt, merged

pytestmark = pytest.mark.unit


@contextlib.contextmanager
def _disposition(signum: signal.Signals, handler: signal.Handlers) -> Iterator[None]:
    """signum's handler set to handler for the test, and the run's own set back after it (a run
    started under nohup ignores SIGHUP)."""
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_the_signal_interrupts_until_the_last_twin_stops_whatever_the_order(signum: signal.Signals) -> None:
    with _disposition(signum, signal.SIG_DFL):
        function_twin, session_twin = _signals_interrupt(), _signals_interrupt()
        function_twin.__enter__()
        session_twin.__enter__()
        function_twin.__exit__(None, None, None)  # the function's twin stops first, though it started first
        with pytest.raises(KeyboardInterrupt, match=signum.name):
            signal.raise_signal(signum)
        session_twin.__exit__(None, None, None)
        assert signal.getsignal(signum) is signal.SIG_DFL


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_someone_else_s_handler_is_left_alone(signum: signal.Signals) -> None:
    def theirs(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("theirs")

    with _disposition(signum, theirs):  # type: ignore[arg-type]
        with _signals_interrupt():
            assert signal.getsignal(signum) is theirs
        assert signal.getsignal(signum) is theirs


def test_an_ignored_sighup_stays_ignored_while_a_twin_runs_and_while_it_stops() -> None:
    """nohup pytest ...: the run is to outlive its terminal, and so are its twins."""
    with _disposition(signal.SIGHUP, signal.SIG_IGN), _disposition(signal.SIGTERM, signal.SIG_DFL):
        with _signals_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # SIGTERM still interrupts
            with _interrupts_wait("twin"):
                assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_while_a_twin_stops_sighup_only_says_to_wait_even_without_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with _disposition(signal.SIGHUP, signal.SIG_DFL), _interrupts_wait("twin"):
        signal.raise_signal(signal.SIGHUP)
        assert "twin: stopping the local twin, please wait" in capsys.readouterr().err

        class HungUp:
            def write(self, text: str) -> int:
                raise OSError(5, "Input/output error")

        # The terminal closed: the stop it interrupted goes on.
        monkeypatch.setattr("sys.stderr", HungUp())
        signal.raise_signal(signal.SIGHUP)


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
