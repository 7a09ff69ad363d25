"""The pool: its cap, the FIFO borrow queue and its timeout, init_query, idle timeouts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from emulator.rdsproxy import texts
from emulator.wait import wait_until

from .helpers import ProxyUnderTest

pytestmark = pytest.mark.integration


def test_the_cap_is_max_connections_times_the_percentage_minus_reserved(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    # The stack's PostgreSQL has max_connections = 30.
    assert make_proxy(max_connections_percent=50).stats()["max_database_connections_allowed"] == 15
    assert make_proxy(max_connections_percent=55).stats()["max_database_connections_allowed"] == 16
    assert (
        make_proxy(max_connections_percent=50, reserved_connections=2).stats()[
            "max_database_connections_allowed"
        ]
        == 13
    )


@pytest.fixture
def one_connection(make_proxy: Callable[..., ProxyUnderTest]) -> ProxyUnderTest:
    # floor(30 x 4 / 100) = 1
    return make_proxy(max_connections_percent=4, connection_borrow_timeout=1)


def test_a_borrow_that_waits_too_long_gets_rds_proxys_error_and_is_closed(
    one_connection: ProxyUnderTest,
) -> None:
    with one_connection.connect() as holder, one_connection.connect() as waiter:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as caught:
            waiter.execute("SELECT 1")
        waited = time.monotonic() - started
        holder.execute("COMMIT")
        assert caught.value.sqlstate == "08000"
        assert caught.value.diag.severity == "FATAL"
        assert caught.value.diag.message_primary == texts.BORROW_TIMEOUT
        assert 1.0 <= waited < 3.0
        assert waiter.closed
    assert one_connection.stats()["borrow_timeouts"] >= 1


@pytest.mark.parametrize(
    "cursor_factory",
    # ClientCursor sends simple queries; the default cursor Parse, Bind, Execute and Sync.
    [psycopg.ClientCursor, psycopg.Cursor],
    ids=["simple-query", "extended-protocol"],
)
def test_a_borrow_timeout_of_severity_error_fails_only_the_request(
    make_proxy: Callable[..., ProxyUnderTest], cursor_factory: type[psycopg.Cursor[Any]]
) -> None:
    proxy = make_proxy(
        max_connections_percent=4, connection_borrow_timeout=1, borrow_timeout_severity="ERROR"
    )
    timeouts_before = proxy.stats()["borrow_timeouts"]  # the proxy is shared with the other case
    with proxy.connect() as holder, proxy.connect(cursor_factory=cursor_factory) as waiter:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError) as caught:
            waiter.execute("SELECT %s::int", [1])
        assert caught.value.sqlstate == "08000"
        assert caught.value.diag.severity == "ERROR"
        assert caught.value.diag.message_primary == texts.BORROW_TIMEOUT
        holder.execute("COMMIT")
        # The session goes on: the next request borrows the connection the holder gave back.
        assert waiter.execute("SELECT 2").fetchone() == (2,)
        assert not waiter.closed
    assert proxy.stats()["borrow_timeouts"] == timeouts_before + 1


def test_waiting_borrows_are_served_first_come_first_served(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    # One connection, and a borrow timeout no slow machine reaches: the order is what is tested.
    proxy = make_proxy(max_connections_percent=4, connection_borrow_timeout=60)
    served_at: dict[int, Any] = {}
    holder = proxy.connect()
    holder.execute("BEGIN")
    holder.execute("SELECT 1")
    waiters = [proxy.connect() for _ in range(3)]

    def wait_in_line(index: int) -> None:
        # When the database ran it: on one connection, statements run one after another, so this
        # orders them exactly (the order the replies reach Python threads does not).
        row = waiters[index].execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        served_at[index] = row[0]

    threads = []
    for index in range(3):
        thread = threading.Thread(target=wait_in_line, args=(index,))
        thread.start()
        threads.append(thread)
        wait_until(
            lambda n=index: proxy.stats()["borrow_waiters"] == n + 1, component="the borrow queue", timeout=5
        )
    holder.execute("COMMIT")
    for thread in threads:
        thread.join(10)
    holder.close()
    for conn in waiters:
        conn.close()
    assert sorted(served_at, key=served_at.__getitem__) == [0, 1, 2]


def test_init_query_runs_on_every_new_database_connection(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    proxy = make_proxy(init_query="SET statement_timeout = 12345; SET lock_timeout = 2345")
    with proxy.connect() as first, proxy.connect() as second:
        first.execute("BEGIN")
        second.execute("BEGIN")
        for conn in (first, second):
            assert conn.execute("SHOW statement_timeout").fetchone() == ("12345ms",)
            assert conn.execute("SHOW lock_timeout").fetchone() == ("2345ms",)
        first.execute("COMMIT")
        second.execute("COMMIT")
    # The proxy's own SET does not pin.
    assert proxy.stats()["database_connections_pinned"] == 0


def test_an_idle_client_is_disconnected_and_its_database_connection_stays(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    proxy = make_proxy(idle_client_timeout=1)
    conn = proxy.connect()
    conn.execute("SELECT 1")
    database_connections = proxy.stats()["database_connections"]
    wait_until(lambda: proxy.stats()["client_connections"] == 0, component="idle client timeout", timeout=10)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    assert proxy.stats()["database_connections"] == database_connections


def test_idle_database_connections_above_the_idle_percentage_are_closed(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    # cap 6, keep floor(30 x 7 / 100) = 2 idle, idle means unused for 1 s here (5 minutes in AWS)
    proxy = make_proxy(max_connections_percent=20, max_idle_connections_percent=7, idle_connection_seconds=1)
    clients = [proxy.connect() for _ in range(6)]
    for conn in clients:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
    assert proxy.stats()["database_connections"] == 6
    for conn in clients:
        conn.execute("COMMIT")
        conn.close()
    wait_until(lambda: proxy.stats()["database_connections"] == 2, component="idle trimming", timeout=10)


def test_the_database_connection_is_encrypted_exactly_when_the_client_connection_is(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    # "For an encrypted or unencrypted connection to a proxy, the proxy uses the same encryption
    # setting when it makes a connection to the underlying database" (the reference, section 3).
    proxy = make_proxy(require_tls=False, iam_auth="DISABLED")
    ssl_of_backend = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    with proxy.connect(sslmode="disable") as plain, proxy.connect(sslmode="require") as encrypted:
        for _ in range(3):  # and again on later borrows: the two never share a database connection
            assert plain.execute(ssl_of_backend).fetchone() == (False,)
            assert encrypted.execute(ssl_of_backend).fetchone() == (True,)
    stats = proxy.stats()
    assert stats["database_connection_requests"] - stats["database_connection_requests_tls"] >= 1
    assert stats["database_connection_requests_tls"] >= 1


def test_logins_asking_for_the_same_new_parameter_value_together_borrow_one_connection_for_it(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    # A login's startup parameters are spelled as PostgreSQL reports them, asked once per value on a
    # borrowed connection. A burst of first logins (Lambda environments starting together) used to
    # borrow one each, and a burst larger than the database's room left some waiting their whole
    # borrow timeout while connections sat idle.
    proxy = make_proxy(max_connections_percent=7)  # floor(30 x 7 / 100) = 2 connections
    holders = [proxy.connect() for _ in range(2)]
    for holder in holders:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")  # both connections borrowed: the spelling must wait
    before = proxy.stats()
    name = f"burst-{time.monotonic_ns()}"  # a value no login asked for before
    results: list[str] = []

    def log_in() -> None:
        try:
            with proxy.connect(application_name=name) as conn:
                results.append(conn.execute("SHOW application_name").fetchone()[0])
        except psycopg.Error as exc:
            results.append(repr(exc))

    logins = [threading.Thread(target=log_in) for _ in range(6)]
    for login in logins:
        login.start()
    wait_until(
        lambda: sum(s["application_name"] == "" and s["user"] != "" for s in proxy.emulator.sessions()) >= 6,
        component="six logins past authentication",
        timeout=10,
    )
    for holder in holders:
        holder.execute("COMMIT")
    for login in logins:
        login.join(timeout=30)
    for holder in holders:
        holder.close()
    assert results == [name] * 6
    assert proxy.stats()["borrows"] - before["borrows"] <= 1 + 6  # one spelling, six SHOWs
