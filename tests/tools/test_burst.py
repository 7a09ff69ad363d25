"""How a burst names its invocations' failures: one text per kind of failure, so that they can be counted."""

from __future__ import annotations

from emulator.tools.burst import describe_failure


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
