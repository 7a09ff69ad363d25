"""A steady load of invocations: a few warm execution environments, each invoking on a fixed period
until told to stop, with every call's start, end and outcome kept for the timeline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from emulator.awslambda.function import LambdaFunction, Throttled
from emulator.tools.burst import describe_failure


@dataclass(frozen=True)
class Call:
    """One invocation: when it started and ended (time.monotonic()) and its error, None when it
    succeeded ("SQLSTATE message", as the burst reports it)."""

    started: float
    ended: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class SteadyLoad:
    """`workers` threads, each invoking `function` every `period` seconds (at once when a call took
    longer): the same request rate whatever happens to the database, as a steady trickle of traffic
    keeps arriving during a failover. Stop with stop(); the calls are in `calls`, in end order."""

    function: LambdaFunction
    event: Mapping[str, Any]
    workers: int = 8
    period: float = 0.1
    calls: list[Call] = field(default_factory=list)
    on_call: Callable[[Call], None] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        # Staggered starts spread the calls evenly over the period instead of in lockstep.
        first = time.monotonic()
        for number in range(self.workers):
            offset = self.period * number / self.workers
            thread = threading.Thread(
                target=self._work, args=(first + offset,), name=f"steady-{number}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 120) -> None:
        """Ask every worker to stop after its current call and wait for them (a call ends within
        the function's own timeout)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self, next_at: float) -> None:
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            started = time.monotonic()
            next_at = started + self.period
            try:
                invocation = self.function.invoke(dict(self.event))
                answer = invocation.json()
                error = None
                if not invocation.succeeded:
                    error = describe_failure(answer if isinstance(answer, dict) else {"errorMessage": answer})
            except Throttled as exc:
                error = f"TooManyRequestsException {exc}"
            call = Call(started, time.monotonic(), error)
            with self._lock:
                self.calls.append(call)
            if self.on_call is not None:
                self.on_call(call)
