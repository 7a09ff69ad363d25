"""Isolation: clients sharing three database connections never see each other's state, whatever
state the others vanish in.

The randomized run (isolation.py) is the broad check; the tests after it are its findings reduced to
one client that vanishes and one that comes next on a pool of a single connection, so that the next
client is sure to get the connection the first one left.

CI runs 20 clients x 30 steps; a longer run: LOCAL_TWIN_ISOLATION_STEPS=500 (and _CLIENTS, _SEED,
_SECONDS for the run's deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend
from emulator.stack.embedded import EmbeddedStack
from emulator.stack.rdsproxy import RdsProxyEmulator

from .helpers import ProxyUnderTest, wait_quiescent
from .isolation import (
    COPY_DONE,
    FLUSH,
    TABLE,
    TABLE_DDL,
    Answer,
    Endpoint,
    HarnessConfig,
    Identity,
    Ledger,
    RawClient,
    bind,
    copy_data,
    execute,
    one_third,
    parse,
    run_isolation,
    server_baseline,
)

pytestmark = pytest.mark.integration

MD5 = {"require_tls": False, "iam_auth": "DISABLED", "client_password_auth_type": "POSTGRES_MD5"}
# floor(30 x 10 / 100) = 3 database connections for many clients.
SMALL_POOL = {**MD5, "max_connections_percent": 10, "connection_borrow_timeout": 10}
# floor(30 x 4 / 100) = 1: the next client surely gets the connection the last one left.
ONE_CONNECTION = {**MD5, "max_connections_percent": 4, "connection_borrow_timeout": 5}


def _endpoint(stack: EmbeddedStack, proxy: ProxyUnderTest) -> Endpoint:
    postgres = stack.postgres
    return Endpoint(
        host=proxy.host,
        port=proxy.port,
        user=proxy.user,
        password=stack.db_password,
        database=proxy.database,
        admin_conninfo=postgres.conninfo(
            user="postgres", password=postgres.superuser_password, dbname=proxy.database, connect_timeout=10
        ),
        stats=proxy.stats,
        wait_quiescent=lambda: wait_quiescent(proxy.emulator, timeout=15),
        log=lambda: proxy.emulator.log_path.read_text(errors="replace"),
    )


def _fresh_table(stack: EmbeddedStack) -> None:
    with stack.postgres.admin_connection(stack.config.database) as admin:
        admin.execute(f"DROP TABLE IF EXISTS {TABLE}")
        admin.execute(TABLE_DDL)
        admin.execute(f'ALTER TABLE {TABLE} OWNER TO "{stack.config.db_user}"')


def _committed(stack: EmbeddedStack) -> list[tuple[Any, ...]]:
    with stack.postgres.admin_connection(stack.config.database) as admin:
        return admin.execute(f"SELECT client, txn, seq FROM {TABLE} ORDER BY txn, seq").fetchall()


_names = itertools.count(1)


@pytest.fixture
def own_proxy(stack: EmbeddedStack) -> Iterator[Callable[..., ProxyUnderTest]]:
    """Emulators of this test alone, stopped after it: a proxy that a test leaves broken (a session
    stuck for good, a connection never returned) must not fail the tests after it too."""
    started: list[RdsProxyEmulator] = []

    def start(**settings: Any) -> ProxyUnderTest:
        emulator = stack.make_emulator(settings, name=f"rdsproxy-isolation-{next(_names)}")
        started.append(emulator)
        emulator.start()
        return ProxyUnderTest(stack, emulator)

    yield start
    try:
        for emulator in started:
            wait_quiescent(emulator, timeout=15)
    finally:
        for emulator in started:
            emulator.stop()


@pytest.fixture
def small_pool(stack: EmbeddedStack, own_proxy: Callable[..., ProxyUnderTest]) -> Endpoint:
    _fresh_table(stack)
    return _endpoint(stack, own_proxy(**SMALL_POOL))


@pytest.fixture
def one_connection(stack: EmbeddedStack, own_proxy: Callable[..., ProxyUnderTest]) -> Scenario:
    _fresh_table(stack)
    return Scenario(_endpoint(stack, own_proxy(**ONE_CONNECTION)))


def test_many_clients_vanishing_in_any_state_each_see_only_their_own_state(small_pool: Endpoint) -> None:
    config = HarnessConfig.from_environment()
    report = asyncio.run(run_isolation(small_pool, config))
    print(report.summary())
    assert report.lent_out_of_sync == 0
    assert report.violations == [], report.summary()


# -- the situations one by one -------------------------------------------------------------------


class Scenario:
    """Raw clients of one test on one event loop, every one of them gone at the end, whatever happened."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.baseline = server_baseline(endpoint.admin_conninfo)
        self.clients: list[RawClient] = []

    async def client(self, number: int, **identity: Any) -> RawClient:
        """A client logged in with its identity (the server's parameters for those not given)."""
        chosen = {"timezone": None, "extra_float_digits": None, **identity}
        client = RawClient(Identity(number, "raw", **chosen), self.endpoint, Ledger(), self.baseline, seed=0)
        self.clients.append(client)
        await client.login()
        return client

    async def next_client_query(self) -> list[tuple[str | None, ...]]:
        """A client logging in after the one that vanished: its query must be answered, soon."""
        after = await self.client(len(self.clients) + 1)
        try:
            answer = await asyncio.wait_for(after.query("SELECT 'next client'"), 8)
        except TimeoutError:
            raise AssertionError("the next client's query got no answer within 8 s") from None
        await after.w.terminate()
        return answer.rows

    def run(self, body: Callable[[Scenario], Coroutine[Any, Any, None]], timeout: float = 30) -> None:
        async def bounded() -> None:
            try:
                await asyncio.wait_for(body(self), timeout)
            finally:
                for client in self.clients:
                    if client.wire is not None:
                        client.wire.abandon()

        asyncio.run(bounded())


def _lent_out_of_sync(scenario: Scenario) -> int:
    return int(scenario.endpoint.stats().get("lent_out_of_sync", 0))


def test_an_insert_flushed_but_never_synced_by_a_vanished_client_is_never_committed(
    stack: EmbeddedStack, one_connection: Scenario
) -> None:
    # Parse/Bind/Execute + Flush: the INSERT ran in an implicit transaction that only a Sync ends;
    # every answer has arrived, so nothing but the missing Sync tells the proxy the work is unfinished.
    async def body(scenario: Scenario) -> None:
        gone = await scenario.client(1)
        insert = parse("", f"INSERT INTO {TABLE} VALUES ('c0001', 'c0001-t1', 0)")
        gone.w.send(insert + bind("", []) + execute() + FLUSH)
        assert "".join(chr(f.kind) for f in await gone.answers(3)) == "12C"
        await gone.w.vanish(reset=False)
        assert await scenario.next_client_query() == [("next client",)]

    one_connection.run(body)
    assert _committed(stack) == []
    assert _lent_out_of_sync(one_connection) == 0


def test_a_client_that_vanishes_in_error_state_leaves_no_connection_waiting_for_a_sync(
    one_connection: Scenario,
) -> None:
    # After an error the server ignores every message until a Sync: a connection handed on in that
    # state swallows the next client's queries.
    async def body(scenario: Scenario) -> None:
        gone = await scenario.client(1)
        gone.w.send(parse("", "SELECT 1/(random() * 0)::int") + bind("", []) + execute() + FLUSH)
        assert "".join(chr(f.kind) for f in await gone.answers(3)) == "12E"
        await gone.w.vanish(reset=False)
        assert await scenario.next_client_query() == [("next client",)]

    one_connection.run(body)
    assert _lent_out_of_sync(one_connection) == 0


def test_a_client_stuck_behind_an_error_state_connection_can_leave_and_the_proxy_recovers(
    one_connection: Scenario,
) -> None:
    # Whatever the proxy does with such a connection, a client that gives up on it must not leave
    # its session (and the pool's only connection) stuck for good.
    async def body(scenario: Scenario) -> None:
        gone = await scenario.client(1)
        gone.w.send(parse("", "SELECT * FROM iso_no_such_table") + FLUSH)
        assert "".join(chr(f.kind) for f in await gone.answers(1)) == "E"
        await gone.w.vanish(reset=False)
        after = await scenario.client(2, extra_float_digits=-2)
        after.w.send(m.simple_query("SELECT 1"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(after.w.until(Backend.READY_FOR_QUERY), 3)
        await after.w.vanish(reset=False)

    one_connection.run(body)
    one_connection.endpoint.wait_quiescent()


def test_a_client_that_vanishes_mid_copy_leaves_nothing_committed(
    stack: EmbeddedStack, one_connection: Scenario
) -> None:
    async def body(scenario: Scenario) -> None:
        gone = await scenario.client(1)
        gone.w.send(m.simple_query(f"COPY {TABLE} FROM STDIN"))
        assert chr((await gone.w.frame()).kind) == "G"
        gone.w.send(copy_data("c0001\tc0001-t1\t0\n"))
        await gone.w.vanish(reset=False)
        assert await scenario.next_client_query() == [("next client",)]

    one_connection.run(body)
    assert _committed(stack) == []
    assert _lent_out_of_sync(one_connection) == 0


def test_a_client_that_vanishes_mid_transaction_leaves_nothing_committed(
    stack: EmbeddedStack, one_connection: Scenario
) -> None:
    async def body(scenario: Scenario) -> None:
        gone = await scenario.client(1)
        await gone.query("BEGIN", "T")
        await gone.query(f"INSERT INTO {TABLE} VALUES ('c0001', 'c0001-t1', 0)", "T")
        await gone.w.vanish(reset=True)
        assert await scenario.next_client_query() == [("next client",)]

    one_connection.run(body)
    assert _committed(stack) == []
    assert _lent_out_of_sync(one_connection) == 0


def test_a_finished_copy_then_commit_is_committed(stack: EmbeddedStack, one_connection: Scenario) -> None:
    # The control for the vanishing ones: the same COPY, finished and committed, is there.
    async def body(scenario: Scenario) -> None:
        client = await scenario.client(1)
        await client.query("BEGIN", "T")
        client.w.send(m.simple_query(f"COPY {TABLE} FROM STDIN"))
        assert chr((await client.w.frame()).kind) == "G"
        client.w.send(copy_data("c0001\tc0001-t1\t0\n") + COPY_DONE)
        client.check(Answer(await client.w.until(Backend.READY_FOR_QUERY)), "T")
        await client.query("COMMIT")
        await client.w.terminate()

    one_connection.run(body)
    assert _committed(stack) == [("c0001", "c0001-t1", 0)]


def test_a_client_that_chose_no_extra_float_digits_prints_floats_as_the_server_default(
    one_connection: Scenario,
) -> None:
    # extra_float_digits is not reported by the server: the proxy must remember what it set for an
    # earlier client of the connection, and undo it for a client that chose nothing.
    async def body(scenario: Scenario) -> None:
        chooser = await scenario.client(1, extra_float_digits=-3)
        assert (await chooser.query("SELECT (1.0::float8 / 3)::text")).value() == one_third(-3)
        await chooser.w.terminate()
        plain = await scenario.client(2)
        assert (await plain.query("SELECT (1.0::float8 / 3)::text")).value() == one_third(1)
        await plain.w.terminate()

    one_connection.run(body)
