"""Failover of a replicated target (target_instances), on two independent PostgreSQL servers: the
proxy finds the writer by asking each instance, and when it loses it, moves to the next one that
answers pg_is_in_recovery() = false. Idle clients survive, clients in a transaction or a statement
get an error (none hangs), pinned sessions are closed, borrows wait for the new writer."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from emulator.stack.embedded import EmbeddedStack
from emulator.stack.postgres import PostgresServer
from emulator.wait import wait_until

from .failover_support import LongStatements, start_instance, stop_immediately
from .helpers import ProxyUnderTest, wait_quiescent

pytestmark = pytest.mark.integration
_runs = itertools.count(1)


@contextlib.contextmanager
def _two_instances(
    stack: EmbeddedStack, **settings: Any
) -> Iterator[tuple[PostgresServer, PostgresServer, ProxyUnderTest]]:
    run = next(_runs)
    first = start_instance(stack, f"failover-a-{run}")
    second = start_instance(stack, f"failover-b-{run}")
    emulator = stack.make_emulator(
        {
            "target_instances": [f"db-a={first.host}:{first.port}", f"db-b={second.host}:{second.port}"],
            "connection_borrow_timeout": 30,
            "max_connections_percent": 50,
            **settings,
        },
        name=f"rdsproxy-failover-{run}",
    )
    try:
        emulator.start()
        yield first, second, ProxyUnderTest(stack, emulator)
        wait_quiescent(emulator, timeout=20)
    finally:
        emulator.stop()
        first.stop()
        second.stop()


@pytest.fixture
def pair(stack: EmbeddedStack) -> Iterator[tuple[PostgresServer, PostgresServer, ProxyUnderTest]]:
    with _two_instances(stack) as started:
        yield started


def _log(proxy: ProxyUnderTest) -> str:
    return proxy.emulator.log_path.read_text()


def test_a_start_up_that_finds_no_writer_warns_and_goes_on_when_one_comes(stack: EmbeddedStack) -> None:
    first = start_instance(stack, "no-writer-a")
    first.stop()
    emulator = stack.make_emulator(
        {"target_instances": [f"db-a={first.host}:{first.port}"]}, name="rdsproxy-no-writer"
    )
    try:
        emulator.launch()
        wait_until(
            lambda: emulator.log_path.exists() and "[WARN] No writer yet: " in emulator.log_path.read_text(),
            component="the proxy's warning",
            timeout=30,
        )
        first.start()
        emulator.wait_ready()
        assert "The writer instance is db-a" in emulator.log_path.read_text()
    finally:
        emulator.stop()
        first.stop()


def _port(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT inet_server_port()").fetchone()
    assert row is not None
    return int(row[0])


def test_the_first_instance_in_order_that_is_not_in_recovery_is_the_writer(
    pair: tuple[PostgresServer, PostgresServer, ProxyUnderTest],
) -> None:
    first, _second, proxy = pair
    stats = proxy.stats()
    assert stats["target_writer"] == "db-a"
    assert stats["target_roles"] == {"db-a": "writer", "db-b": "writer"}
    with proxy.connect() as conn:
        assert _port(conn) == first.port
    # Looking for the writer is routine at start-up: INFO, and no WARN at all.
    log = _log(proxy)
    assert "[INFO] The proxy is looking for the writer among its target's instances." in log
    assert "[WARN]" not in log


def test_a_failover_spares_idle_clients_and_cancels_those_in_a_transaction_or_a_statement(
    pair: tuple[PostgresServer, PostgresServer, ProxyUnderTest],
) -> None:
    first, second, proxy = pair
    idle = [proxy.connect() for _ in range(4)]
    for conn in idle:
        assert _port(conn) == first.port
    in_transaction = proxy.connect()
    in_transaction.execute("BEGIN")
    in_transaction.execute("SELECT 1")
    pinned = proxy.connect()
    pinned.execute("SET search_path = public")  # a session-level SET pins
    busy = [proxy.connect() for _ in range(3)]
    statements = LongStatements(busy)
    wait_until(lambda: proxy.stats()["pool"]["borrowed"] == 5, component="the statements", timeout=10)

    stop_immediately(first)

    for error in statements.outcomes():
        assert isinstance(error, psycopg.OperationalError), error
        assert error.sqlstate == "08006", error
        assert "middle of a request" in str(error)
    # Idle clients: still connected, and their next transaction runs on the new writer.
    for conn in idle:
        assert _port(conn) == second.port
    # The client in a transaction learns at its next statement that the transaction is gone.
    with pytest.raises(psycopg.OperationalError, match="middle of a transaction") as lost:
        in_transaction.execute("SELECT 1")
    assert lost.value.sqlstate == "08006"
    assert _port(in_transaction) == second.port
    # Clients whose statement was cancelled go on too.
    for conn in busy:
        assert _port(conn) == second.port
    # A pinned session's state (its SET) was on the old writer: the session is closed.
    with pytest.raises(psycopg.OperationalError):
        pinned.execute("SELECT 1")
    stats = proxy.stats()
    assert stats["target_writer"] == "db-b"
    assert stats["failovers"] == 1
    assert stats["target_available"]
    assert "[WARN] The proxy lost the writer instance db-a (" in _log(proxy)
    for conn in [*idle, in_transaction, pinned, *busy]:
        conn.close()


def test_a_borrow_waits_while_no_instance_is_the_writer_and_succeeds_once_one_is(
    pair: tuple[PostgresServer, PostgresServer, ProxyUnderTest],
) -> None:
    first, second, proxy = pair
    client = proxy.connect()
    assert _port(client) == first.port
    stop_immediately(second)
    stop_immediately(first)
    outcome: dict[str, object] = {}

    def query() -> None:
        try:
            outcome["port"] = _port(client)
        except psycopg.Error as exc:
            outcome["port"] = exc

    thread = threading.Thread(target=query)
    thread.start()
    wait_until(lambda: not proxy.stats()["target_available"], component="the writer's loss", timeout=10)
    wait_until(lambda: proxy.stats()["borrow_waiters"] == 1, component="the waiting borrow", timeout=10)
    assert proxy.stats()["target_writer"] is None
    second.start()
    thread.join(30)
    assert not thread.is_alive()
    assert outcome["port"] == second.port
    assert proxy.stats()["target_writer"] == "db-b"
    client.close()


def test_with_failover_error_severity_fatal_a_client_in_a_transaction_is_closed(stack: EmbeddedStack) -> None:
    with _two_instances(stack, failover_error_severity="FATAL") as (first, second, proxy):
        idle = proxy.connect()
        in_transaction = proxy.connect()
        in_transaction.execute("BEGIN")
        in_transaction.execute("SELECT 1")
        stop_immediately(first)
        with pytest.raises(psycopg.OperationalError, match="middle of a transaction"):
            in_transaction.execute("SELECT 1")
        assert in_transaction.closed
        assert _port(idle) == second.port  # idle clients survive whatever the setting
        idle.close()


def test_a_fast_shutdowns_fatal_never_reaches_a_client_that_keeps_its_connection(
    pair: tuple[PostgresServer, PostgresServer, ProxyUnderTest],
) -> None:
    first, second, proxy = pair
    with contextlib.ExitStack() as clients:
        idle, in_transaction, busy = (clients.enter_context(proxy.connect()) for _ in range(3))
        assert _port(idle) == first.port
        in_transaction.execute("BEGIN")
        in_transaction.execute("SELECT 1")
        outcome: dict[str, object] = {}

        def long_statement() -> None:
            try:
                busy.execute("SELECT pg_sleep(60)")
                outcome["busy"] = "finished"
            except psycopg.Error as exc:
                outcome["busy"] = exc

        thread = threading.Thread(target=long_statement)
        thread.start()
        wait_until(lambda: proxy.stats()["pool"]["borrowed"] == 2, component="the statement", timeout=10)

        # A fast shutdown: the server sends each backend's client FATAL 57P01 "terminating connection
        # due to administrator command" before it closes the connection.
        first.stop()

        # The client idle in its transaction gets the proxy's ERROR (psycopg would raise AdminShutdown
        # for the server's FATAL, and take it as the end of the connection) and goes on.
        with pytest.raises(psycopg.OperationalError, match="middle of a transaction") as lost:
            in_transaction.execute("SELECT 1")
        assert not isinstance(lost.value, psycopg.errors.AdminShutdown)
        assert lost.value.sqlstate == "08006"
        assert lost.value.diag.severity == "ERROR"
        assert lost.value.diag.message_detail == (
            "The database ended the connection: terminating connection due to administrator command "
            "(SQLSTATE 57P01)."
        )
        assert not in_transaction.closed
        in_transaction.execute("ROLLBACK")
        assert _port(in_transaction) == second.port
        # The client in a statement: the proxy's ERROR for its request, and it goes on too.
        thread.join(20)
        assert not thread.is_alive(), "a client in a statement hangs"
        error = outcome["busy"]
        assert isinstance(error, psycopg.OperationalError), error
        assert not isinstance(error, psycopg.errors.AdminShutdown)
        assert error.sqlstate == "08006", error
        assert "middle of a request" in str(error)
        assert _port(busy) == second.port
        # An idle client sees nothing at all.
        assert _port(idle) == second.port


def test_with_failover_error_severity_fatal_a_fast_shutdown_closes_a_client_in_a_transaction(
    stack: EmbeddedStack,
) -> None:
    with (
        _two_instances(stack, failover_error_severity="FATAL") as (first, second, proxy),
        proxy.connect() as idle,
        proxy.connect() as in_transaction,
    ):
        in_transaction.execute("BEGIN")
        in_transaction.execute("SELECT 1")
        first.stop()  # fast: the server's FATAL 57P01, then the connection closes
        with pytest.raises(psycopg.OperationalError, match="middle of a transaction") as lost:
            in_transaction.execute("SELECT 1")
        assert lost.value.sqlstate == "08006"
        assert lost.value.diag.severity == "FATAL"
        assert in_transaction.closed
        assert _port(idle) == second.port
