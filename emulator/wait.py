"""Readiness checks with deadlines, never fixed sleeps.

Modelled on testcontainers' wait strategies: poll a cheap probe with a short back-off until it says
yes or the deadline passes, and then fail with what the last probe said.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from emulator.errors import ReadinessTimeout


def wait_until(
    probe: Callable[[], bool],
    *,
    component: str,
    timeout: float,
    alive: Callable[[], str | None] | None = None,
    hint: str = "",
    max_delay: float = 0.1,
) -> float:
    """Poll probe until it returns True; return the seconds it took.

    The pause between polls doubles from 5 ms up to max_delay (raise it for probes that cost money
    or count against a quota, such as CloudWatch's API).

    alive, when given, is asked between polls and returns a reason when the component has died (for a
    process: its exit status and the tail of its log), so a crash fails at once instead of at the
    deadline.
    """
    started = time.monotonic()
    deadline = started + timeout
    delay = 0.005
    last_error = ""
    while True:
        try:
            if probe():
                return time.monotonic() - started
        except Exception as exc:  # noqa: BLE001 - the probe's failure is why we keep waiting
            last_error = f"{type(exc).__name__}: {exc}"
        if alive is not None:
            dead = alive()
            if dead is not None:
                raise ReadinessTimeout(component, f"exited before it was ready: {dead}", hint)
        now = time.monotonic()
        if now >= deadline:
            detail = f" (last check: {last_error})" if last_error else ""
            raise ReadinessTimeout(component, f"not ready after {timeout:.0f} s{detail}", hint)
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, max_delay)
