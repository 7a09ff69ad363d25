"""A burst of concurrent invocations, each in its own execution environment, as Lambda scales out."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from emulator.awslambda.function import Invocation, LambdaFunction, Throttled


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

    result = BurstResult(invocations)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=invocations, thread_name_prefix="invoke") as pool:
        result.responses = list(pool.map(invoke_one, range(invocations)))
    result.wall_seconds = time.monotonic() - started
    for response in result.responses:
        if response.get("ok"):
            result.succeeded += 1
        else:
            result.errors[describe_failure(response)] += 1
    return result
