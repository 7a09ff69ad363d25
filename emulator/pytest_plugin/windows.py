"""Each test's window on the twins it uses: what they logged, what the proxy pinned and how many
database connections they needed, from the test's start to its end.

A window opens when the test's setup begins (or when a twin it uses starts during that setup): the
logs' ends are noted and the proxy's peaks reset. After each phase the functions' and the proxy's
lines since then become report sections ("Captured Lambda log call"), shown with a failure as pytest
shows captured output. After the call the pins since the start are judged, and after the teardown
those of the teardown; then the test's execution environments are recycled, so the next test starts
from cold environments and no pinned session outlives the test that made it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pytest

from emulator.pytest_plugin.options import allow_all_pins
from emulator.pytest_plugin.verdicts import ALLOW_PIN, cap_failure, pin_failure, unexpected_pins

if TYPE_CHECKING:
    from emulator.tools.activity import BackendSampler
    from emulator.twin.local import LocalTwin
    from emulator.twin.logs import Checkpoint
    from emulator.twin.pins import Pin

Phase = Literal["setup", "call", "teardown"]
TWINS = pytest.StashKey["Twins"]()
WITHIN_CAP = "twin_within_cap"
# How often the database's connections are counted for twin_within_cap (seconds).
SAMPLE_PERIOD = 0.02


@dataclass
class TwinRun:
    """A twin the plugin started, under its fixture's name."""

    name: str
    twin: LocalTwin
    start_seconds: float
    emulated: bool


@dataclass
class Window:
    run: TwinRun
    # Logs are delivered up to here; the pins they held wait for the next verdict.
    read_to: Checkpoint
    pins: list[Pin] = field(default_factory=list)
    # The database's own count, for tests that use twin_within_cap: sampled until the call ends.
    sampler: BackendSampler | None = None
    sampling: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    # The twin stopped during the test (its last user's teardown): nothing more to read.
    closed: bool = False


class Twins:
    """The plugin's twins and the windows of the test being run (one at a time)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.running: dict[str, TwinRun] = {}
        # Whether a twin ran in this session (and the Lambda environments' zygote with it).
        self.ever_started = False
        self.item: pytest.Item | None = None
        self.windows: dict[str, Window] = {}

    # -- the twins' lives ---------------------------------------------------------------------------

    def starting(self) -> None:
        self.ever_started = True

    def started(self, run: TwinRun) -> None:
        self.running[run.name] = run
        if self.item is not None and run.name in _fixtures(self.item):
            self._open(run)

    def stopping(self, name: str) -> None:
        """Called before a twin stops: its window delivers what it has, for the teardown report."""
        self.running.pop(name, None)
        window = self.windows.get(name)
        if window is not None and not window.closed and self.item is not None:
            window.sampling.close()
            self._deliver(self.item, window, "teardown")
            window.closed = True

    # -- a test's phases ----------------------------------------------------------------------------

    def begin(self, item: pytest.Item) -> None:
        self.item = item
        self.windows = {}
        for run in self.running.values():
            if run.name in _fixtures(item):
                self._open(run)

    def phase_ended(self, item: pytest.Item, phase: Phase, *, passed: bool) -> None:
        """Deliver each window's logs for the phase; after a call or teardown that passed, fail the
        test (pytest.fail) for pins it did not declare and, with twin_within_cap, connections over
        the cap."""
        failures = []
        for window in self.windows.values():
            if not window.closed:
                self._deliver(item, window, phase)
            if phase == "setup" and passed:
                continue  # setup's pins are judged with the call's
            pins, window.pins = window.pins, []
            if passed:
                failures += self._verdicts(item, window, pins, phase)
        measured = any(window.sampler is not None for window in self.windows.values())
        if phase == "call" and passed and WITHIN_CAP in _fixtures(item) and not measured:
            failures.append(f"{WITHIN_CAP}: this test used no twin with the RDS Proxy emulator")
        if phase == "teardown":
            self._finish()
        if failures:
            pytest.fail("\n\n".join(failures), pytrace=False)

    def _open(self, run: TwinRun) -> None:
        if run.emulated:
            run.twin.reset_peaks()
        window = Window(run, read_to=run.twin.checkpoint())
        assert self.item is not None
        if WITHIN_CAP in _fixtures(self.item) and run.emulated:
            from emulator.tools.activity import BackendSampler  # noqa: PLC0415 - only with a twin

            stack = run.twin.stack
            window.sampler = window.sampling.enter_context(
                BackendSampler(
                    stack.postgres,
                    user=stack.config.db_user,
                    database=stack.config.database,
                    period=SAMPLE_PERIOD,
                )
            )
        self.windows[run.name] = window

    def _deliver(self, item: pytest.Item, window: Window, phase: Phase) -> None:
        logs = window.run.twin.logs(since=window.read_to)
        window.read_to = logs.until
        window.pins += logs.pins
        suffix = "" if window.run.name == "twin" else f" ({window.run.name})"
        if logs.functions:
            item.add_report_section(phase, f"Lambda log{suffix}", logs.functions)
        if logs.proxy:
            item.add_report_section(phase, f"RDS Proxy log{suffix}", logs.proxy)

    def _verdicts(self, item: pytest.Item, window: Window, pins: list[Pin], phase: Phase) -> list[str]:
        failures = []
        if pins and not allow_all_pins(self.config):
            unexpected = unexpected_pins(pins, _allowed(item))
            if unexpected:
                failures.append(pin_failure(unexpected, window.run.name))
        if phase == "call" and window.sampler is not None:
            window.sampling.close()
            twin = window.run.twin
            stats = twin.stats()
            # The samples, and the count now: connections the test left open (frozen environments
            # keep theirs) are counted even when they opened after the last sample.
            failure = cap_failure(
                cap=stats.max_database_connections_allowed,
                proxy_peak=stats.peak_database_connections,
                database_peak=max(window.sampler.samples.peak, twin.connections().database),
            )
            if failure is not None:
                failures.append(failure)
        return failures

    def _finish(self) -> None:
        """The test is over: stop sampling, and recycle the environments of the twins it used."""
        for window in self.windows.values():
            window.sampling.close()
            if not window.closed:
                window.run.twin.recycle()
        self.windows = {}
        self.item = None


def _fixtures(item: pytest.Item) -> list[str]:
    """Every fixture the test uses, directly or through others (only test functions have any)."""
    names: list[str] = getattr(item, "fixturenames", [])
    return names


def _allowed(item: pytest.Item) -> tuple[str, ...] | None:
    """What the test's twin_allow_pin markers allow: None without one, () for any pin."""
    markers = list(item.iter_markers(ALLOW_PIN))
    if not markers:
        return None
    if any(not marker.args for marker in markers):
        return ()
    return tuple(str(pattern) for marker in markers for pattern in marker.args)
