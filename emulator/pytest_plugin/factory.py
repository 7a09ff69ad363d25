"""Twins as fixtures: the configured one (`twin`), and `twin_fixture(...)` for others, as
pytest-postgresql's factories make `postgresql_proc`.

    # conftest.py
    from emulator.pytest_plugin import twin_fixture

    small_pool_twin = twin_fixture(proxy_settings={"max_connections_percent": 10})

A factory's options go on top of the configured ones (ini file, command line): mappings (env,
proxy_settings, tf_vars, functions) name by name, everything else replaced.

A twin stops with its fixture's scope, after a failure, on Ctrl+C, on SIGTERM and on SIGHUP (a closed
terminal; both turned into KeyboardInterrupt while a twin runs, so pytest tears everything down); a
Ctrl+C while it stops only says to wait, so nothing it started is left behind.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

import pytest

from emulator.pytest_plugin.options import configured
from emulator.pytest_plugin.windows import TWINS, TwinRun

# pytest's fixture scopes.
Scope = Literal["session", "package", "module", "class", "function"]

if TYPE_CHECKING:
    from typing import Unpack

    from emulator.twin.local import LocalTwin
    from emulator.twin.options import TwinOptions


def twin_fixture(*, scope: Scope = "session", **options: Unpack[TwinOptions]) -> Any:
    """A fixture that starts a twin with these options on top of the configured ones."""
    overrides = dict(options)

    @pytest.fixture(scope=scope)
    def local_twin(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[LocalTwin]:
        yield from run_twin(request, tmp_path_factory, overrides)

    return local_twin


def run_twin(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, overrides: dict[str, Any]
) -> Iterator[LocalTwin]:
    # The kit's heavy modules (boto3, moto, psycopg) load here, when a test first asks for a twin.
    from emulator.errors import ComponentError  # noqa: PLC0415
    from emulator.twin.local import LocalTwin  # noqa: PLC0415
    from emulator.twin.options import OptionError  # noqa: PLC0415

    name = request.fixturename
    assert name is not None, "run_twin is a fixture's body"
    options = merged(configured(request.config), overrides)
    # The functions' log goes to a file of the twin's, read per test; never into pytest's output.
    options["function_log"] = tmp_path_factory.mktemp(name, numbered=True) / "functions.log"
    twins = request.config.stash[TWINS]
    with _signals_interrupt():
        started = time.monotonic()
        try:
            twin = LocalTwin(**options)
            twins.starting()
            twin.__enter__()  # stops what it started if it fails half-way
        except (ComponentError, OptionError) as exc:
            # from None: pytest would print the error a second time, as the context of its Failed.
            message = f"{name}: the local twin did not start.\n{exc}"
            raise pytest.fail.Exception(message, pytrace=False) from None
        try:
            emulated = twin.config.proxy == "emulator"
            twins.started(TwinRun(name, twin, time.monotonic() - started, emulated))
            yield twin
        finally:
            try:
                twins.stopping(name)
            finally:
                with _interrupts_wait(name):
                    twin.stop()


def merged(configured: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides on top of the configured options; mappings merged name by name."""
    result = dict(configured)
    for key, value in overrides.items():
        base = result.get(key)
        result[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
    return result


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


# SIGTERM: a CI runner's timeout, `kill`; SIGHUP: the terminal closed, an SSH session dropped.
INTERRUPTING = (signal.SIGTERM, signal.SIGHUP)
# How many twins run under _interrupt, by signal (twins of different scopes need not stop in the
# order they started: the handler stays until the last one stops).
_interrupt_users = dict.fromkeys(INTERRUPTING, 0)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP as Ctrl+C while a twin runs, so pytest tears it down instead of dying with
    its files left behind. Each only when nobody else handles it: an ignored SIGHUP (nohup) stays
    ignored."""
    taken = []
    if _in_main_thread():
        for signum in INTERRUPTING:
            if signal.getsignal(signum) in (signal.SIG_DFL, _interrupt):
                signal.signal(signum, _interrupt)
                _interrupt_users[signum] += 1
                taken.append(signum)
    try:
        yield
    finally:
        for signum in taken:
            _interrupt_users[signum] -= 1
            if _interrupt_users[signum] == 0:
                signal.signal(signum, signal.SIG_DFL)


@contextlib.contextmanager
def _interrupts_wait(name: str) -> Iterator[None]:
    """While a twin stops, Ctrl+C, SIGTERM and SIGHUP only say to wait: an interrupted stop would
    leave servers running."""
    if not _in_main_thread():
        yield
        return

    def wait(signum: int, frame: FrameType | None) -> None:
        # After SIGHUP the terminal may be gone (EIO): the stop goes on all the same.
        with contextlib.suppress(OSError):
            sys.stderr.write(f"\n{name}: stopping the local twin, please wait\n")

    # An ignored SIGHUP (nohup) stays ignored.
    signals = [signal.SIGINT, *(sig for sig in INTERRUPTING if signal.getsignal(sig) is not signal.SIG_IGN)]
    previous = {signum: signal.signal(signum, wait) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler not set from Python, which Python cannot set back.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
