"""A burst of concurrent invocations, each in its own execution environment, as Lambda scales out."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from emulator.awslambda.function import Invocation, LambdaFunction, Throttled

# What PostgreSQL says when it is out of connection slots (SQLSTATE 53300): libpq reports it at
# connect as text only, so a handler's error may carry the text without the code.
_TOO_MANY = ("too many clients already", "remaining connection slots are reserved")
_SQLSTATE = re.compile(r"SQLSTATE:? ?([0-9A-Z]{5})")
# Lambda's own errors name the invocation they ended, which would make every such failure a group
# of its own: "RequestId: ID Error: Runtime exited ..." (Runtime.ExitError) and, for a timeout,
# "2026-12-04T03:16:34.073Z ID Task timed out after 30.00 seconds".
_INVOCATION_PREFIXES = (
    re.compile(r"RequestId: (?P<request_id>\S+)\s+"),
    re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\s+(?P<request_id>[0-9a-fA-F-]{36})\s+"),
)


@dataclass
class BurstResult:
    invocations: int
    # Lambda's notion: invocations without a function error, whatever their payload says.
    succeeded: int = 0
    # "SQLSTATE message" (or "errorType message", or the message alone) -> how many invocations
    # failed with it
    errors: Counter[str] = field(default_factory=Counter)
    # For an error whose message named its invocation (Lambda's own: a timeout, a runtime exit),
    # the first such invocation's request id: the count drops the ids, this keeps one to look up
    # in the function's log.
    request_ids: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    # Each invocation's answer: its payload, or its error as Lambda reports it
    # ({"errorType", "errorMessage"}; TooManyRequestsException when throttled).
    responses: list[dict[str, Any]] = field(default_factory=list)
    # When each invocation ended (time.monotonic()) and its error ("SQLSTATE message"; None: it
    # succeeded), in the order they ended.
    ended: list[tuple[float, str | None]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.invocations - self.succeeded

    @property
    def refused_connections(self) -> int:
        """Failures because PostgreSQL had no connection slot left (the problem the demo shows)."""
        return sum(count for error, count in self.errors.items() if error.startswith("53300 "))


def without_invocation(message: str) -> tuple[str, str | None]:
    """An error message without what names its invocation (Lambda's request id, and a timeout's
    timestamp), and that request id (None: the message named no invocation)."""
    for prefix in _INVOCATION_PREFIXES:
        found = prefix.match(message)
        if found is not None:
            return message[found.end() :], found["request_id"]
    return message, None


def describe_failure(error: Mapping[str, Any]) -> str:
    """ "SQLSTATE message" for a failed invocation's error ({"errorType", "errorMessage"}), its
    errorType in place of a SQLSTATE it lacks, the message alone when it has neither (a timeout);
    the same failure gives the same text in every invocation, so that they can be counted together."""
    message, _ = without_invocation(str(error.get("errorMessage", "")))
    found = _SQLSTATE.search(message)
    sqlstate = found.group(1) if found else None
    if sqlstate is None and any(text in message for text in _TOO_MANY):
        sqlstate = "53300"
    # libpq prefixes startup errors with the server address; the text after FATAL is what users know.
    _, fatal, after = message.partition("FATAL:")
    text = after if fatal else message.split("): ", 1)[-1]
    code = sqlstate or error.get("errorType")
    text = " ".join(text.split())
    return f"{code} {text}" if code else text or "an error without a message"


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

    def invoke_one(_: int) -> tuple[bool, dict[str, Any], float]:
        barrier.wait(timeout=60)
        try:
            invocation: Invocation = function.invoke(dict(event))
            answer = invocation.json()
            succeeded, answer = (
                invocation.succeeded,
                answer if isinstance(answer, dict) else {"payload": answer},
            )
        except Throttled as exc:
            succeeded, answer = False, {"errorType": "TooManyRequestsException", "errorMessage": str(exc)}
        ended = time.monotonic()
        if on_done is not None:
            on_done()
        return succeeded, answer, ended

    result = BurstResult(invocations)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=invocations, thread_name_prefix="invoke") as pool:
        outcomes = list(pool.map(invoke_one, range(invocations)))
    result.wall_seconds = time.monotonic() - started
    result.responses = [answer for _, answer, _ in outcomes]
    for succeeded, answer, ended in sorted(outcomes, key=lambda outcome: outcome[2]):
        error = None if succeeded else describe_failure(answer)
        result.ended.append((ended, error))
        if error is None:
            result.succeeded += 1
        else:
            result.errors[error] += 1
            _, request_id = without_invocation(str(answer.get("errorMessage", "")))
            if request_id is not None:
                result.request_ids.setdefault(error, request_id)
    return result
