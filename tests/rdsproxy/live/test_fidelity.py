"""Timeouts, log lines and metrics as RDS Proxy defines them (reference, sections 2.4, 3 and 4)."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from emulator.rdsproxy import texts
from emulator.rdsproxy.protocol import messages as m
from emulator.wait import wait_until

from .helpers import ProxyUnderTest, RawClient

pytestmark = pytest.mark.integration

PLAIN = {"iam_auth": "DISABLED", "require_tls": False, "client_password_auth_type": "POSTGRES_MD5"}


def _log(proxy: ProxyUnderTest) -> str:
    return proxy.emulator.log_path.read_text()


def _closed_lines(proxy: ProxyUnderTest, client_id: str) -> list[str]:
    return [
        line
        for line in _log(proxy).splitlines()
        if f"[clientConnection={client_id}]" in line and "The client connection closed." in line
    ]


def _client_id(proxy: ProxyUnderTest, application_name: str) -> str:
    (session,) = [s for s in proxy.emulator.sessions() if s["application_name"] == application_name]
    return str(session["client_connection"])


@pytest.fixture
def short_idle(make_proxy: Callable[..., ProxyUnderTest]) -> ProxyUnderTest:
    return make_proxy(**PLAIN, idle_client_timeout=2, max_connections_percent=7)


def test_a_client_waiting_for_its_long_query_is_not_idle(short_idle: ProxyUnderTest) -> None:
    with short_idle.connect() as conn:
        assert conn.execute("SELECT pg_sleep(4), 'answered'").fetchone() == ("", "answered")
        assert conn.execute("SELECT 'still connected'").fetchone() == ("still connected",)


def test_an_idle_client_is_closed_with_its_reason_and_its_connection_rolled_back(
    short_idle: ProxyUnderTest,
) -> None:
    conn = short_idle.connect(application_name="idle-in-transaction")
    client_id = _client_id(short_idle, "idle-in-transaction")
    conn.execute("BEGIN")
    conn.execute("SELECT 1")
    # The client now sleeps in its transaction, as a frozen Lambda environment does.
    wait_until(
        lambda: short_idle.stats()["database_connections_in_transaction"] == 0,
        component="the idle client's transaction rolled back",
        timeout=6,
    )
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    lines = _closed_lines(short_idle, client_id)
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"Reason: {texts.IDLE_CLIENT_CLOSE}")


def test_a_frozen_tls_client_is_cut_at_once_not_waited_for(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    proxy = make_proxy(idle_client_timeout=2, max_connections_percent=7)  # TLS and IAM required
    conn = proxy.connect(application_name="frozen-tls")
    client_id = _client_id(proxy, "frozen-tls")
    conn.execute("BEGIN")
    conn.execute("SELECT 1")
    # Frozen: never reads, never answers a TLS close. The proxy must not wait for one.
    started = time.monotonic()
    wait_until(
        lambda: proxy.stats()["client_connections"] == 0,
        component="the frozen client closed",
        timeout=8,
    )
    assert time.monotonic() - started < 5
    assert proxy.stats()["database_connections_in_transaction"] == 0
    assert len(_closed_lines(proxy, client_id)) == 1
    conn.close()


def test_a_borrow_timeout_of_zero_waits_without_limit(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    # floor(30 x 4 / 100) = 1 database connection; 0 is "no limit" in the RDS API.
    proxy = make_proxy(**PLAIN, max_connections_percent=4, connection_borrow_timeout=0)
    holder = proxy.connect()
    holder.execute("BEGIN")
    holder.execute("SELECT 1")
    answers: list[object] = []

    def wait_for_the_connection() -> None:
        with proxy.connect() as waiter:
            answers.append(waiter.execute("SELECT 'served'").fetchone())

    waiting = threading.Thread(target=wait_for_the_connection)
    waiting.start()
    wait_until(lambda: proxy.stats()["borrow_waiters"] == 1, component="the waiting borrow", timeout=10)
    waiting.join(2)
    assert waiting.is_alive()  # still waiting, not refused
    holder.execute("COMMIT")
    waiting.join(10)
    assert answers == [("served",)]
    holder.close()


def test_a_client_is_closed_between_requests_after_the_maximum_client_connection_life(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    proxy = make_proxy(**PLAIN, max_client_connection_lifetime=2, max_connections_percent=7)
    conn = proxy.connect(application_name="old-client")
    client_id = _client_id(proxy, "old-client")
    assert (
        conn.execute("SELECT pg_sleep(3), 'a request is never cut'").fetchone()[1] == "a request is never cut"
    )
    wait_until(lambda: proxy.stats()["client_connections"] == 0, component="the old client closed", timeout=5)
    assert _closed_lines(proxy, client_id)[0].endswith(f"Reason: {texts.CLIENT_LIFETIME_CLOSE}")
    conn.close()


def test_a_client_that_never_finishes_its_startup_packet_is_let_go(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    proxy = make_proxy(**PLAIN, client_login_timeout=2, max_connections_percent=7)
    half = socket.create_connection((proxy.host, proxy.port), timeout=10)
    half.sendall(m.startup_message({"user": proxy.user})[:6])
    started = time.monotonic()
    assert half.recv(1) == b""  # closed by the proxy
    assert 1.5 < time.monotonic() - started < 6
    half.close()
    assert texts.LOGIN_TIMEOUT.format(seconds=2) in _log(proxy)


def test_close_reasons_are_rds_proxys(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    proxy = make_proxy(**PLAIN, max_connections_percent=7)
    polite = proxy.connect(application_name="polite")
    polite_id = _client_id(proxy, "polite")
    polite.close()  # sends Terminate
    dropped = RawClient(proxy.host, proxy.port)
    dropped.login_md5(proxy.user, proxy.stack.db_password, proxy.database, application_name="dropped")
    dropped_id = _client_id(proxy, "dropped")
    dropped.close()  # no Terminate: the TCP connection just ends
    wait_until(lambda: proxy.stats()["client_connections"] == 0, component="both clients gone", timeout=5)
    assert _closed_lines(proxy, polite_id)[0].endswith(
        "Reason: The client requested that the connection close."
    )
    assert _closed_lines(proxy, dropped_id)[0].endswith(
        "Reason: The TCP channel was closed by either the client or the proxy."
    )


def test_a_new_database_connection_is_logged_as_rds_proxy_logs_it(
    make_proxy: Callable[..., ProxyUnderTest],
) -> None:
    proxy = make_proxy(**PLAIN, max_connections_percent=7)
    with proxy.connect() as conn:
        conn.execute("SELECT 1")
    pattern = re.compile(
        r"\[INFO\] A TCP connection was established from the proxy at 127\.0\.0\.1:\d+ to the database at "
        r"127\.0\.0\.1:\d+\.$"
    )
    assert any(pattern.search(line) for line in _log(proxy).splitlines())


def test_enhanced_logging_shows_the_sql(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    proxy = make_proxy(**PLAIN, debug_logging=True, max_connections_percent=7)
    with proxy.connect(prepare_threshold=0) as conn:
        conn.execute("SELECT 'simple protocol sql'", prepare=False)
        conn.execute("SELECT %s::text AS extended_protocol_sql", ("x",))
    log = _log(proxy)
    assert "SELECT 'simple protocol sql'" in log
    assert "extended_protocol_sql" in log


def test_query_requests_count_extended_protocol_queries(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    proxy = make_proxy(**PLAIN, max_connections_percent=7)
    before = proxy.stats()["query_requests"]
    with proxy.connect(prepare_threshold=0) as conn:
        for value in range(5):
            conn.execute("SELECT %s::int", (value,))
    assert proxy.stats()["query_requests"] - before == 5


def test_the_target_has_the_role_rds_proxy_creates(proxy: ProxyUnderTest) -> None:
    with proxy.stack.postgres.admin_connection() as admin:
        assert admin.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'rdsproxyadmin'"
        ).fetchone() == (True,)
