"""Transaction-level multiplexing, proven by counts in pg_stat_activity and by what clients see."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend, Frontend
from emulator.rdsproxy.protocol.pinning import REASON_SETTINGS
from emulator.wait import wait_until

from .helpers import ProxyUnderTest, RawClient

pytestmark = pytest.mark.integration


@pytest.fixture
def pool_of_two(make_proxy: Callable[..., ProxyUnderTest]) -> ProxyUnderTest:
    # floor(30 x 7 / 100) = 2 database connections
    return make_proxy(max_connections_percent=7)


def test_many_clients_share_a_few_database_connections(pool_of_two: ProxyUnderTest) -> None:
    assert pool_of_two.stats()["max_database_connections_allowed"] == 2
    clients = [pool_of_two.connect() for _ in range(12)]
    barrier = threading.Barrier(len(clients))
    peak = 0

    def work(conn: psycopg.Connection[Any]) -> int:
        barrier.wait()
        total = 0
        for _ in range(10):
            with conn.transaction():
                total += conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user"
                ).fetchone()[0]
        return total

    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            futures = [pool.submit(work, conn) for conn in clients]
            while not all(f.done() for f in futures):
                peak = max(peak, pool_of_two.stats()["database_connections"])
            results = [f.result() for f in futures]
        assert len(results) == 12
        assert peak <= 2
        assert pool_of_two.stats()["peak_database_connections"] <= 2
        assert pool_of_two.stats()["client_connections"] == 12
    finally:
        for conn in clients:
            conn.close()


def test_interleaved_transactions_see_committed_data_only(pool_of_two: ProxyUnderTest) -> None:
    with pool_of_two.connect() as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS interleave (who text)")
        setup.execute("TRUNCATE interleave")
    with pool_of_two.connect() as alice, pool_of_two.connect() as bob:
        alice.execute("BEGIN")
        alice.execute("INSERT INTO interleave VALUES ('alice, uncommitted')")
        assert bob.execute("SELECT count(*) FROM interleave").fetchone() == (0,)
        bob.execute("INSERT INTO interleave VALUES ('bob, autocommitted')")
        assert alice.execute("SELECT who FROM interleave ORDER BY who").fetchall() == [
            ("alice, uncommitted",),
            ("bob, autocommitted",),
        ]
        alice.execute("COMMIT")
        assert bob.execute("SELECT count(*) FROM interleave").fetchone() == (2,)


def test_a_transaction_keeps_its_database_connection_and_autocommit_statements_may_move(
    pool_of_two: ProxyUnderTest,
) -> None:
    with pool_of_two.connect() as conn, pool_of_two.connect() as other:
        conn.execute("BEGIN")
        inside = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(5)}
        assert len(inside) == 1
        # While conn holds one connection, other can only use the second one.
        assert other.execute("SELECT pg_backend_pid()").fetchone()[0] not in inside
        conn.execute("COMMIT")


def test_named_prepared_statements_follow_the_client_across_connections(pool_of_two: ProxyUnderTest) -> None:
    holder = pool_of_two.connect()
    with psycopg.connect(**pool_of_two.conninfo(), prepare_threshold=0, autocommit=True) as conn:
        first = conn.execute("SELECT %s::int + 1, pg_backend_pid()", (1,)).fetchone()
        # Take the connection conn just used, so conn's next statement runs on the other one.
        holder.execute("BEGIN")
        held = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        second = conn.execute("SELECT %s::int + 1, pg_backend_pid()", (2,)).fetchone()
        holder.execute("COMMIT")
        # The pool hands out the most recently used connection first: holder took conn's.
        assert held == first[1]
        assert second[1] != first[1]
        assert (first[0], second[0]) == (2, 3)
    holder.close()
    assert pool_of_two.stats()["database_connections_pinned"] == 0


def test_closing_a_prepared_statement_never_pins(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    proxy = make_proxy(iam_auth="DISABLED", require_tls=False, client_password_auth_type="POSTGRES_MD5")
    client = RawClient(proxy.host, proxy.port)
    client.login_md5(proxy.user, proxy.stack.db_password, proxy.database)
    client.send(m.parse_message("s1", "SELECT 1", b"\0\0") + m.SYNC)
    assert [f.kind for f in client.read_until(Backend.READY_FOR_QUERY)] == [
        Backend.PARSE_COMPLETE,
        Backend.READY_FOR_QUERY,
    ]
    client.send(m.target_message(Frontend.CLOSE, "S", "s1") + m.SYNC)
    assert [f.kind for f in client.read_until(Backend.READY_FOR_QUERY)] == [
        Backend.CLOSE_COMPLETE,
        Backend.READY_FOR_QUERY,
    ]
    assert proxy.stats()["database_connections_pinned"] == 0
    # Closed for the client: binding it again is the server's usual error.
    client.send(m.frame(Frontend.BIND, b"\0s1\0\0\0\0\0\0\0") + m.SYNC)
    assert client.expect_error()["C"] == "26000"
    client.read_until(Backend.READY_FOR_QUERY)
    client.close()


def test_session_parameters_chosen_at_startup_follow_the_client(pool_of_two: ProxyUnderTest) -> None:
    with (
        psycopg.connect(
            **pool_of_two.conninfo(), autocommit=True, **{"application_name": "tokyo-client"}
        ) as named,
        pool_of_two.connect() as plain,
    ):
        for _ in range(3):
            assert named.execute("SHOW application_name").fetchone() == ("tokyo-client",)
            assert plain.execute("SHOW application_name").fetchone() == ("",)


def test_the_timezone_a_client_chose_is_in_force_on_every_connection(
    pool_of_two: ProxyUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq sends PGTZ as the TimeZone startup parameter, one RDS Proxy accepts.
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    tokyo = pool_of_two.connect()
    monkeypatch.delenv("PGTZ")
    with tokyo, pool_of_two.connect() as utc:
        for _ in range(4):
            assert tokyo.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
            assert utc.execute("SHOW TimeZone").fetchone() != ("Asia/Tokyo",)
        assert tokyo.info.parameter_status("TimeZone") == "Asia/Tokyo"


def test_a_set_pins_the_session_and_never_leaks_to_another_client(pool_of_two: ProxyUnderTest) -> None:
    with pool_of_two.connect() as pinned, pool_of_two.connect() as other:
        pinned.execute("SET search_path TO pinned_schema, public")
        stats = pool_of_two.stats()
        assert stats["database_connections_pinned"] == 1
        pids = {pinned.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(4)}
        assert len(pids) == 1
        assert pinned.execute("SHOW search_path").fetchone() == ("pinned_schema, public",)
        for _ in range(4):
            assert other.execute("SHOW search_path").fetchone() == ('"$user", public',)
            assert other.execute("SELECT pg_backend_pid()").fetchone()[0] not in pids
    assert pool_of_two.stats()["database_connections_pinned"] == 0


def test_the_pin_is_logged_in_rds_proxy_format(pool_of_two: ProxyUnderTest) -> None:
    with pool_of_two.connect() as conn:
        conn.execute("SET extra_float_digits = 3")
    log = pool_of_two.emulator.log_path.read_text()
    expected = REASON_SETTINGS.format(digest="set extra_float_digits = $1")
    line = next(line for line in log.splitlines() if expected in line)
    assert "[WARN] [proxyEndpoint=default] [clientConnection=" in line
    assert "The client session was pinned to the database connection [dbConnection=" in line
    assert (
        "for the remainder of the session. The proxy can't reuse this connection until the session ends."
        in line
    )


def test_a_pinned_sessions_connection_is_reset_and_pooled_again(pool_of_two: ProxyUnderTest) -> None:
    with pool_of_two.connect() as conn:
        conn.execute("SET work_mem = '8MB'")
        conn.execute("CREATE TEMP TABLE leftover (a int)")
        conn.execute("SELECT pg_advisory_lock(42)")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    wait_until(
        lambda: pool_of_two.stats()["pool"]["idle"] == pool_of_two.stats()["pool"]["total"],
        component="the pinned session's connection back in the pool",
        timeout=10,
    )
    assert pid in pool_of_two.stats()["backend_pids"]  # reset, not closed
    with pool_of_two.connect() as fresh:
        assert fresh.execute("SHOW work_mem").fetchone() == ("4MB",)
        assert fresh.execute("SELECT to_regclass('pg_temp.leftover')").fetchone() == (None,)
        locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 42"
        assert fresh.execute(locks).fetchone() == (0,)
    log = pool_of_two.emulator.log_path.read_text()
    assert "The database connection was released to the connection pool upon session reset." in log
