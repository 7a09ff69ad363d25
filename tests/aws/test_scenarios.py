"""Scenarios written once, asserted the same way on the local twin and on AWS.

Each one also records its figures (target.figures), which `nox -s aws` sets side by side for both
targets in its comparison report, including what the assertions leave open (which of RDS Proxy's
TLS texts, the borrow timeout's SQLSTATE, how many connections a burst took).
"""

from __future__ import annotations

import pytest

from emulator.rdsproxy import texts
from emulator.stage.target import StageTarget, now

pytestmark = pytest.mark.integration

BURST = 12


def test_the_handler_connects_through_the_proxy_with_an_iam_token_and_keeps_its_connection(
    target: StageTarget,
) -> None:
    first = target.invoke(target.function, {})
    second = target.invoke(target.function, {})
    assert first["ok"] is True, first
    assert first["result"]["user"] == target.outputs["db_username"]
    assert second["ok"] is True, second
    # A warm execution environment keeps its connection to the proxy between invocations.
    assert second["connection_reused"] is True
    target.figures["handler"] = {
        "database user": first["result"]["user"],
        "server version": first["result"]["server_version"],
        "warm invocation reuses its connection": second["connection_reused"],
    }


def test_a_connection_without_tls_is_refused_in_rds_proxys_words(target: StageTarget) -> None:
    [session] = target.probe([{"sslmode": "disable", "statements": ["SELECT 1"]}])
    assert session["error"] is not None, session
    message = session["error"]["message"]
    # Which of the two texts a plain IAM login gets first is what the stage finds out.
    assert texts.TLS_REQUIRED in message or texts.IAM_NEEDS_TLS in message, message
    target.figures["tls required"] = {
        "refusal text": texts.TLS_REQUIRED if texts.TLS_REQUIRED in message else texts.IAM_NEEDS_TLS,
        "sqlstate": session["error"]["sqlstate"],
    }


def test_a_session_setting_pins_and_the_proxy_log_gives_the_reason(target: StageTarget) -> None:
    since = now()
    [session] = target.probe([{"statements": ["SET search_path TO public", "SELECT 1"], "hold_seconds": 1}])
    assert session["error"] is None, session
    lines = target.wait_for_log(since, lambda line: "was pinned" in line and "Reason: " in line)
    reasons = sorted({line.split("Reason: ", 1)[1].split(" Digest")[0].strip() for line in lines})
    assert any(reason.startswith("SQL changed session settings") for reason in reasons), reasons
    target.figures["pinning"] = {"pin reasons logged": reasons}


def test_a_borrow_that_waits_past_the_timeout_gets_rds_proxys_error(target: StageTarget) -> None:
    # Ten sessions hold a transaction each for longer than the 5 s borrow timeout; the pool (5 % of
    # max_connections) has room for a few of them only.
    holding = {"statements": ["BEGIN", "SELECT pg_backend_pid()"], "hold_seconds": 12}
    results = target.probe([holding] * 10, concurrent=True)
    held = [r for r in results if r["error"] is None]
    timed_out = [r for r in results if r["error"] and texts.BORROW_TIMEOUT in r["error"]["message"]]
    others = [r for r in results if r["error"] and r not in timed_out]
    assert held, results
    assert timed_out, results
    assert not others, others
    target.figures["borrow timeout"] = {
        "sessions that got a connection": len(held),
        "sessions timed out": len(timed_out),
        "sqlstate": sorted({r["error"]["sqlstate"] for r in timed_out}),
        "seconds until the error (slowest)": max(r["seconds"] for r in timed_out),
    }


def test_a_burst_of_invocations_shares_a_few_database_connections(target: StageTarget) -> None:
    since = now()
    for _ in range(BURST):
        target.invoke_event(target.function, {"sleep_ms": 500})
    clients = target.wait_for_metric("ClientConnections", since, lambda value: value >= BURST // 2)
    allowed = target.wait_for_metric("MaxDatabaseConnectionsAllowed", since, lambda value: value > 0)
    database = target.wait_for_metric("DatabaseConnections", since, lambda value: value > 0)
    # Frozen environments keep their client connections; the pool keeps the database small.
    assert database <= allowed < clients
    target.figures["burst"] = {
        "invocations": BURST,
        "ClientConnections (max)": clients,
        "DatabaseConnections (max)": database,
        "MaxDatabaseConnectionsAllowed": allowed,
        "DatabaseConnectionsBorrowLatency (avg, us)": target.metric_max(
            "DatabaseConnectionsBorrowLatency", since, "Average"
        ),
        "DatabaseConnectionsCurrentlySessionPinned (max)": target.metric_max(
            "DatabaseConnectionsCurrentlySessionPinned", since
        ),
    }
