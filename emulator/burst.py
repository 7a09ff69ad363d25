"""A burst of concurrent invocations, each in its own execution environment, as Lambda scales out."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

from emulator.environments import InProcessEnvironment
from emulator.lambda_function import Invocation, LambdaFunction, Throttled

T = TypeVar("T")


@dataclass
class BurstResult:
    invocations: int
    succeeded: int = 0
    # "SQLSTATE message" -> how many invocations failed with it
    errors: Counter[str] = field(default_factory=Counter)
    wall_seconds: float = 0.0
    responses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.invocations - self.succeeded


def describe_failure(response: Mapping[str, Any]) -> str:
    """ "SQLSTATE message" for a failed handler response."""
    error = response.get("error") or {}
    message = str(error.get("message", ""))
    # libpq prefixes startup errors with the server address; the text after FATAL is what users know.
    _, fatal, after = message.partition("FATAL:")
    text = after if fatal else message
    return f"{error.get('sqlstate') or '-'} {' '.join(text.split())}"


def _all_at_once(invoke_one: Callable[[T], dict[str, Any]], items: Sequence[T]) -> BurstResult:
    """Run invoke_one for every item, each on its own thread, and tally the handler responses."""
    result = BurstResult(len(items))
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="invoke") as pool:
        result.responses = list(pool.map(invoke_one, items))
    result.wall_seconds = time.monotonic() - started
    for response in result.responses:
        if response.get("ok"):
            result.succeeded += 1
        else:
            result.errors[describe_failure(response)] += 1
    return result


class Burst:
    """`invocations` execution environments, initialised together, then invoked all at once.

    Entering runs every environment's Init phase; invoke() releases every invocation through one
    barrier, so each holds its connection at the same time as the others, which is what a burst of
    cold starts does to the database; leaving shuts the environments down (their connections close).
    """

    def __init__(
        self,
        invocations: int,
        *,
        environment_factory: Callable[[], InProcessEnvironment] = InProcessEnvironment,
        on_init: Callable[[], None] | None = None,
    ) -> None:
        self.invocations = invocations
        self.environment_factory = environment_factory
        self.on_init = on_init
        self.environments: list[InProcessEnvironment] = []

    def __enter__(self) -> Self:
        try:
            for _ in range(self.invocations):
                self.environments.append(self.environment_factory())
                if self.on_init is not None:
                    self.on_init()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        for env in self.environments:
            env.shutdown()
        self.environments.clear()

    def invoke(
        self, event: Mapping[str, Any], *, on_done: Callable[[dict[str, Any]], None] | None = None
    ) -> BurstResult:
        barrier = threading.Barrier(len(self.environments))

        def invoke_one(env: InProcessEnvironment) -> dict[str, Any]:
            barrier.wait(timeout=60)
            response: dict[str, Any] = env.invoke(dict(event))
            if on_done is not None:
                on_done(response)
            return response

        return _all_at_once(invoke_one, self.environments)


def run_burst(invocations: int, event: Mapping[str, Any]) -> BurstResult:
    """Initialise, invoke once all together, shut down."""
    with Burst(invocations) as burst:
        return burst.invoke(event)


def invoke_burst(
    function: LambdaFunction,
    invocations: int,
    event: Mapping[str, Any],
    *,
    on_done: Callable[[], None] | None = None,
) -> BurstResult:
    """`invocations` concurrent invocations of a function, released together as a burst arrives:
    each finds no free environment and cold-starts one (up to the concurrency limit; beyond it,
    Lambda's throttling error), whose connection then stays open while it is frozen."""
    barrier = threading.Barrier(invocations)

    def invoke_one(_: int) -> dict[str, Any]:
        barrier.wait(timeout=60)
        try:
            invocation: Invocation = function.invoke(dict(event))
            answer: dict[str, Any] = invocation.json()
            if invocation.function_error:
                answer = {"ok": False, "error": {"sqlstate": None, "message": answer.get("errorMessage", "")}}
        except Throttled as exc:
            answer = {"ok": False, "error": {"sqlstate": None, "message": f"TooManyRequestsException: {exc}"}}
        if on_done is not None:
            on_done()
        return answer

    return _all_at_once(invoke_one, range(invocations))
