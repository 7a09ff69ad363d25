"""Faults: clients that vanish, and a database that restarts under the proxy."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import psutil
import psycopg
import pytest

from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.proxies import ProxyKind
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.wait import wait_until

from .helpers import ProxyUnderTest, wait_quiescent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_stack() -> Iterator[EmbeddedStack]:
    """A stack of its own: these tests stop and start PostgreSQL."""
    config = StackConfig(
        proxy=ProxyKind.EMULATOR,
        max_connections=20,
        pool_size=3,
        proxy_settings={"require_tls": True, "iam_auth": "REQUIRED", "connection_borrow_timeout": 20},
    )
    with EmbeddedStack(config) as stack:
        yield stack


@pytest.fixture
def faulty(own_stack: EmbeddedStack) -> Iterator[ProxyUnderTest]:
    assert isinstance(own_stack.proxy, RdsProxyEmulator)
    yield ProxyUnderTest(own_stack, own_stack.proxy)
    wait_quiescent(own_stack.proxy, timeout=20)


def _abandon(conn: psycopg.Connection[object]) -> None:
    """Drop the TCP connection without a Terminate message, as a crashed client would."""
    sock = socket.socket(fileno=conn.pgconn.socket)
    sock.shutdown(socket.SHUT_RDWR)
    sock.detach()
    conn.close()


def test_a_client_that_vanishes_mid_transaction_leaves_nothing_behind(faulty: ProxyUnderTest) -> None:
    with faulty.connect() as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS vanishing (note text)")
        setup.execute("TRUNCATE vanishing")
    conn = faulty.connect()
    conn.execute("BEGIN")
    conn.execute("INSERT INTO vanishing VALUES ('never committed')")
    _abandon(conn)
    wait_quiescent(faulty.emulator)
    with faulty.connect() as other:
        assert other.execute("SELECT count(*) FROM vanishing").fetchone() == (0,)
        assert other.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
        ).fetchone() == (0,)


def test_a_client_that_vanishes_mid_query_does_not_hand_its_connection_on(faulty: ProxyUnderTest) -> None:
    conn = faulty.connect()
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.execute("BEGIN")
    assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
    conn.pgconn.send_query(b"SELECT pg_sleep(30)")
    time.sleep(0.2)  # let the query reach the server; the test is about what happens while it runs
    _abandon(conn)
    wait_quiescent(faulty.emulator)
    with faulty.connect() as other:
        for _ in range(5):
            assert other.execute("SELECT pg_backend_pid()").fetchone()[0] != pid


def test_a_database_restart_spares_idle_clients_and_fails_only_the_request_in_flight(
    faulty: ProxyUnderTest,
) -> None:
    idle = faulty.connect()
    busy = faulty.connect()
    idle.execute("SELECT 1")
    outcome: dict[str, object] = {}

    def long_query() -> None:
        try:
            busy.execute("SELECT pg_sleep(20)")
            outcome["busy"] = "finished"
        except psycopg.Error as exc:
            outcome["busy"] = exc

    thread = threading.Thread(target=long_query)
    thread.start()
    wait_until(lambda: faulty.stats()["pool"]["borrowed"] == 1, component="the long query", timeout=10)
    postgres = faulty.stack.postgres
    postgres.stop()

    thread.join(20)
    error = outcome["busy"]
    assert isinstance(error, psycopg.Error)
    assert error.sqlstate == "08006", error
    # The client that was in flight keeps its client connection too, and waits for the database.
    restarted = threading.Timer(1.0, postgres.start)
    restarted.start()
    try:
        assert idle.execute("SELECT 'idle client survived'").fetchone() == ("idle client survived",)
        assert busy.execute("SELECT 'busy client goes on'").fetchone() == ("busy client goes on",)
    finally:
        restarted.join()
    idle.close()
    busy.close()


@pytest.mark.parametrize("lent_for", ["its login", "its first request"])
def test_a_pooled_connection_that_dies_as_it_is_lent_is_replaced_before_the_client_notices(
    faulty: ProxyUnderTest, lent_for: str
) -> None:
    # A failover's race (the CI failures of c391c10): the server ended a pooled connection, but its
    # last words had not arrived when it was lent, to learn how the server spells a client's
    # application_name at its login, or to give a request the client's session parameters.
    # Nothing of the client's had reached it: the client must not notice.
    name = f"second ({lent_for})"
    if lent_for == "its first request":
        with faulty.connect(application_name=name):
            pass  # its spelling is known from now on: the login borrows nothing
    with faulty.connect(application_name="first") as first:
        pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    # Its backend is frozen, then told to terminate: it answers nothing until it is let go.
    os.kill(pid, signal.SIGSTOP)
    try:
        with faulty.stack.postgres.admin_connection() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        answers: list[object] = []

        def second_client() -> None:
            try:
                with faulty.connect(application_name=name) as second:
                    answers.append(second.execute("SELECT current_setting('application_name')").fetchone())
            except psycopg.Error as exc:
                answers.append(exc)

        running = threading.Thread(target=second_client)
        running.start()
        # The proxy lent it (the most recently used) and sent the new application_name to it.
        wait_until(lambda: _bytes_waiting(pid) > 0, component="the frozen backend's socket", timeout=10)
    finally:
        os.kill(pid, signal.SIGCONT)
    running.join(30)
    assert answers == [(name,)]
    wait_until(lambda: not psutil.pid_exists(pid), component="the terminated backend", timeout=10)


def test_a_login_s_question_to_a_frozen_connection_is_asked_again_on_another(faulty: ProxyUnderTest) -> None:
    # A login with a parameter whose spelling the proxy does not know yet borrows a pooled connection
    # to ask the server. One whose server does not answer (frozen, unreachable) must keep neither the
    # login waiting for good nor itself borrowed: it is dropped, and the question asked elsewhere.
    with faulty.connect(application_name="before the freeze") as first:
        pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    os.kill(pid, signal.SIGSTOP)  # the most recently used: the next borrow's
    try:
        with faulty.connect(application_name="asked while frozen", connect_timeout=15) as second:
            answer = second.execute("SELECT current_setting('application_name'), pg_backend_pid()").fetchone()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert answer is not None
    assert answer[0] == "asked while frozen"
    assert answer[1] != pid
    # The proxy closed it, and said why: let go, the backend reads the end of its connection and exits.
    wait_until(lambda: not psutil.pid_exists(pid), component="the frozen backend", timeout=10)
    said = "closed. Reason: The database connection was lost: the database connection did not answer"
    log = faulty.emulator.log_path
    wait_until(lambda: said in log.read_text(), component="the proxy's log line", timeout=10)


def _bytes_waiting(pid: int) -> int:
    """What a process's TCP sockets have received and not read yet (/proc/net/tcp's rx_queue)."""
    inodes = {
        os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")
    }
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[9] in inodes:
                    waiting += int(fields[4].split(":")[1], 16)
    return waiting


def test_the_target_is_reported_unavailable_while_the_database_is_down(faulty: ProxyUnderTest) -> None:
    with faulty.connect() as conn:
        conn.execute("SELECT 1")  # an idle pooled connection for the proxy to lose
    postgres = faulty.stack.postgres
    postgres.stop()
    try:
        wait_until(lambda: not faulty.stats()["target_available"], component="unavailability", timeout=10)
        assert faulty.emulator.metrics()["values"]["AvailabilityPercentage"] == 0.0
    finally:
        postgres.start()
    wait_until(lambda: faulty.stats()["target_available"], component="the target again", timeout=20)
    assert faulty.emulator.metrics()["values"]["AvailabilityPercentage"] == 100.0
