"""How a burst names its invocations' failures: one text per kind of failure, so that they can be counted."""

from __future__ import annotations

import json
import uuid
from typing import Any, cast

from emulator.awslambda.function import Invocation, LambdaFunction
from emulator.tools.burst import describe_failure, invoke_burst, without_invocation


def test_a_refused_connection_is_named_by_its_sqlstate_and_postgresql_s_words() -> None:
    message = 'connection to server at "127.0.0.1", port 5432 failed: '
    message += "FATAL:  sorry, too many clients already\n"
    error = {"errorType": "OperationalError", "errorMessage": message}

    assert describe_failure(error) == "53300 sorry, too many clients already"


def test_a_sqlstate_in_the_message_is_used_as_it_is() -> None:
    error = {"errorType": "ProgrammingError", "errorMessage": "relation does not exist (SQLSTATE 42P01)"}

    assert describe_failure(error).startswith("42P01 ")


def test_lambda_s_own_errors_drop_the_request_id_so_that_the_same_exit_is_one_failure() -> None:
    first, second = (
        {
            "errorType": "Runtime.ExitError",
            "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: exit status 4",
        }
        for request_id in ("2f0b6c1e-0d1e-4c36-9b7c-1f5b8e0c0a11", "7a9d3c52-5e8f-4b1a-8c2d-3e4f5a6b7c8d")
    )

    assert describe_failure(first) == describe_failure(second)
    assert describe_failure(first) == "Runtime.ExitError Error: Runtime exited with error: exit status 4"


def _timeout(request_id: str, stamp: str = "2026-12-04T03:16:34.073Z") -> dict[str, str]:
    """A timed-out invocation's error, as Lambda (and LambdaFunction) reports it: no errorType."""
    return {"errorMessage": f"{stamp} {request_id} Task timed out after 30.00 seconds"}


def test_lambda_timeouts_drop_their_timestamp_and_request_id_so_that_they_are_one_failure() -> None:
    first = _timeout("181cc96e-14dc-4fb7-8d2b-cd73a3d12b8f")
    second = _timeout("0da24462-cf63-49b1-bb49-a8a5a12a2d79", stamp="2026-12-04T03:16:34.081Z")

    assert describe_failure(first) == describe_failure(second) == "Task timed out after 30.00 seconds"


def test_a_message_s_invocation_parts_are_removed_and_its_request_id_kept() -> None:
    request_id = "181cc96e-14dc-4fb7-8d2b-cd73a3d12b8f"

    assert without_invocation(_timeout(request_id)["errorMessage"]) == (
        "Task timed out after 30.00 seconds",
        request_id,
    )
    assert without_invocation(f"RequestId: {request_id} Error: Runtime exited") == (
        "Error: Runtime exited",
        request_id,
    )
    # A database's message names no invocation: it is left as it is.
    refused = "FATAL:  sorry, too many clients already"
    assert without_invocation(refused) == (refused, None)


class _TimingOut:
    """A function whose every invocation times out; it remembers the request ids it gave."""

    def __init__(self) -> None:
        self.request_ids: list[str] = []

    def invoke(self, event: dict[str, Any]) -> Invocation:
        request_id = str(uuid.uuid4())
        self.request_ids.append(request_id)
        payload = json.dumps(_timeout(request_id)).encode()
        return Invocation(request_id, payload, "Unhandled", cold_start=True, environment_id=1)


def test_a_burst_counts_timeouts_as_one_failure_and_keeps_one_request_id_to_look_up() -> None:
    function = _TimingOut()

    burst = invoke_burst(cast(LambdaFunction, function), 5, {})

    assert burst.errors == {"Task timed out after 30.00 seconds": 5}
    assert burst.request_ids["Task timed out after 30.00 seconds"] in function.request_ids
