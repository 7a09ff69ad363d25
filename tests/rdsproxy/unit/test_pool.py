"""The pool's rules with a fake opener: the cap, the FIFO line, timeouts, dead connections, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest

from emulator.rdsproxy.dbconn import DatabaseUnavailable, DbConnection, PoolKey, _BackendProtocol, pool_key
from emulator.rdsproxy.pool import BorrowTimeout, Pool, PoolClosed
from emulator.rdsproxy.protocol.routing import Expect
from emulator.rdsproxy.stats import Stats

pytestmark = pytest.mark.unit

APP = PoolKey("app", "app_user", tls=True)
OTHER = PoolKey("other", "app_user", tls=True)
T = TypeVar("T")


class FakeWriter:
    """The transport of a database connection, as the pool and DbConnection look at it."""

    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closing = True


class Opener:
    """Real DbConnections (the type the pool takes, compiled with mypyc or not) on no socket."""

    def __init__(self) -> None:
        self.opened: list[DbConnection] = []
        self.unavailable = False
        # Connections the database takes before it answers "too many clients" (None: no limit).
        self.room: int | None = None
        # Set: each opening waits for it (a connection being opened while something happens).
        self.gate: asyncio.Event | None = None

    async def __call__(self, key: PoolKey) -> DbConnection:
        if self.gate is not None:
            await self.gate.wait()
        if self.unavailable:
            raise DatabaseUnavailable("the database is down")
        if self.room is not None and sum(not conn.broken for conn in self.opened) >= self.room:
            raise DatabaseUnavailable("sorry, too many clients already", full=True)
        reader = asyncio.StreamReader()
        writer = cast(asyncio.Transport, FakeWriter())
        conn = DbConnection(key, reader, writer, tls=True, protocol=_BackendProtocol(reader))
        self.opened.append(conn)
        return conn

    def number(self, conn: DbConnection) -> int:
        """In the order they were opened, from 1."""
        return self.opened.index(conn) + 1


def run(test: Callable[[Pool, Opener], Awaitable[T]], *, cap: int = 2, **pool_args: Any) -> T:
    async def main() -> T:
        opener = Opener()
        pool = Pool(opener, Stats(), **pool_args)
        pool.cap = cap
        return await test(pool, opener)

    return asyncio.run(main())


async def eventually(condition: Callable[[], bool], timeout: float = 2) -> bool:
    """Poll a condition on the event loop until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return condition()


def test_a_returned_connection_is_lent_again_most_recently_used_first() -> None:
    async def test(pool: Pool, opener: Opener) -> list[int]:
        first, second = await pool.borrow(APP, 1), await pool.borrow(APP, 1)
        pool.release(first, reusable=True)
        pool.release(second, reusable=True)
        again = await pool.borrow(APP, 1)
        return [opener.number(again), len(opener.opened)]

    assert run(test) == [2, 2]


def test_borrowers_beyond_the_cap_wait_in_line_and_are_served_first_come_first_served() -> None:
    async def test(pool: Pool, opener: Opener) -> list[str]:
        held = [await pool.borrow(APP, 1), await pool.borrow(APP, 1)]
        served: list[str] = []

        async def wait(name: str) -> None:
            conn = await pool.borrow(APP, 5)
            served.append(f"{name}:{opener.number(conn)}")

        waiters = [asyncio.create_task(wait(name)) for name in ("a", "b")]
        await asyncio.sleep(0)
        assert pool.stats.borrow_waiters == 2
        assert len(opener.opened) == 2  # the cap holds
        pool.release(held[1], reusable=True)
        pool.release(held[0], reusable=True)
        await asyncio.gather(*waiters)
        return served

    assert run(test) == ["a:2", "b:1"]


def test_a_borrow_that_waits_past_its_timeout_fails_and_leaves_the_line() -> None:
    async def test(pool: Pool, opener: Opener) -> int:
        await pool.borrow(APP, 1)
        with pytest.raises(BorrowTimeout):
            await pool.borrow(APP, 0.05)
        return pool.stats.borrow_waiters

    assert run(test, cap=1) == 0


def test_a_connection_that_died_while_idle_is_never_lent() -> None:
    async def test(pool: Pool, opener: Opener) -> list[int]:
        conn = await pool.borrow(APP, 1)
        pool.release(conn, reusable=True)
        opener.opened[0].reader.feed_data(b"E")  # the server said something (a FATAL) or closed
        again = await pool.borrow(APP, 1)
        return [opener.number(again), pool.total]

    assert run(test) == [2, 1]


def test_a_full_pool_closes_an_idle_connection_of_another_database_to_make_room() -> None:
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        other = await pool.borrow(OTHER, 1)
        pool.release(other, reusable=True)
        app = await pool.borrow(APP, 1)
        return [opener.number(app), opener.opened[0].broken, pool.total]

    assert run(test, cap=1) == [2, True, 1]


def test_idle_connections_beyond_the_idle_share_are_closed_after_the_idle_time() -> None:
    async def test(pool: Pool, opener: Opener) -> list[int]:
        conns = [await pool.borrow(APP, 1) for _ in range(3)]
        for conn in conns:
            pool.release(conn, reusable=True)
        kept_while_fresh = pool.trim_idle()
        for conn in opener.opened:
            conn.last_used -= 10
        return [kept_while_fresh, pool.trim_idle(), pool.idle_count()]

    assert run(test, cap=3, idle_keep=1, idle_seconds=5) == [0, 2, 1]


def test_while_the_database_is_down_a_borrow_keeps_trying_until_its_timeout() -> None:
    async def test(pool: Pool, opener: Opener) -> int:
        opener.unavailable = True
        started = time.monotonic()
        with pytest.raises(BorrowTimeout):
            await pool.borrow(APP, 0.3)
        assert time.monotonic() - started >= 0.3
        # The attempt to open gives its slot back once it sees the borrower has gone.
        return await eventually(lambda: pool.total == 0)

    assert run(test)


def test_a_borrow_the_full_database_refused_is_served_by_the_next_connection_given_back() -> None:
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        # The pool's cap is above what the database lets this user open (reserved slots, other
        # clients): the third borrow's connection is refused, and it keeps trying.
        opener.room = 2
        first, _ = await pool.borrow(APP, 1), await pool.borrow(APP, 1)
        third = asyncio.create_task(pool.borrow(APP, 30))
        assert await eventually(lambda: pool.stats.database_connections == 3)  # its slot, opening
        pool.release(first, reusable=True)
        served = await asyncio.wait_for(third, 1)  # not after its 30 s: at once
        # Its attempt to open gives the slot back once it sees the borrow served.
        return [served is first, await eventually(lambda: pool.total == 2), len(opener.opened)]

    assert run(test, cap=3) == [True, True, 2]


def test_a_closed_pool_fails_its_waiters_and_every_later_borrow_with_pool_closed() -> None:
    async def test(pool: Pool, opener: Opener) -> bool:
        await pool.borrow(APP, 1)
        waiter = asyncio.create_task(pool.borrow(APP, 5))
        await asyncio.sleep(0)
        pool.close_all()
        with pytest.raises(PoolClosed):
            await waiter
        with pytest.raises(PoolClosed):
            await pool.borrow(APP, 1)
        return True

    assert run(test, cap=1)


def test_a_connection_given_back_as_not_reusable_is_closed_and_frees_its_slot() -> None:
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        conn = await pool.borrow(APP, 1)
        pool.release(conn, reusable=False)
        return [opener.opened[0].broken, pool.total, pool.stats.database_connections]

    assert run(test) == [True, 0, 0]


def test_a_connection_given_back_out_of_sync_is_closed_never_lent_again() -> None:
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        conn = await pool.borrow(APP, 1)
        # Its borrower sent an extended-protocol message and no Sync: the server is mid-request.
        conn.state.router.expect(Expect.EXECUTE)
        pool.release(conn, reusable=True)
        again = await pool.borrow(APP, 1)
        return [opener.opened[0].broken, opener.number(again), pool.stats.lent_out_of_sync]

    assert run(test) == [True, 2, 0]


def test_letting_go_of_an_instance_closes_its_connections_idle_or_borrowed() -> None:
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        idle, busy = await pool.borrow(APP, 1), await pool.borrow(APP, 1)
        for conn in (idle, busy):
            conn.instance = "db-instance-1"
        pool.release(idle, reusable=True)
        busy.state.router.expect(Expect.QUERY)  # a request in flight: cut under its client all the same
        closed = pool.let_go("db-instance-1")
        # The borrowed one's slot is its session's to give back (as its loss callback does).
        pool.release(busy, reusable=False)
        return [closed, idle.broken, busy.broken, pool.idle_count(), pool.total, len(pool.borrowed)]

    assert run(test) == [2, True, True, 0, 0, 0]


def test_answer_first_a_borrowed_connection_with_a_request_in_flight_retires_instead_of_being_cut() -> None:
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        waiting, answering = await pool.borrow(APP, 1), await pool.borrow(APP, 1)
        for conn in (waiting, answering):
            conn.instance = "db-instance-2"
        answering.state.router.expect(Expect.QUERY)
        # A replica promoted: its answer still comes; the borrowed one between requests goes at once.
        closed = pool.let_go("db-instance-2", answer_first=True)
        cut = [waiting.broken, answering.broken, answering.retiring]
        pool.release(waiting, reusable=False)  # (its session, told of the loss)
        # Answered and given back clean: closed, never lent again, its slot free.
        answering.state.router.ready()
        pool.release(answering, reusable=True)
        slots = [pool.total, len(pool.borrowed), pool.idle_count()]
        again = await pool.borrow(APP, 1)
        return [closed, *cut, answering.broken, *slots, opener.number(again)]

    assert run(test) == [2, True, False, True, True, 0, 0, 0, 3]


def test_answer_first_a_request_not_yet_synced_keeps_its_connection_until_the_sync_is_answered() -> None:
    async def test(pool: Pool, opener: Opener) -> list[bool]:
        conn = await pool.borrow(APP, 1)
        conn.instance = "db-instance-2"
        # Parse and Flush answered, no Sync yet (asyncpg's prepare): the statement lives on it.
        conn.state.router.unsynced = True
        pool.let_go("db-instance-2", answer_first=True)
        return [conn.broken, conn.retiring]

    assert run(test) == [False, True]


def test_a_borrow_waiting_for_room_is_served_when_the_pool_grows() -> None:
    async def test(pool: Pool, opener: Opener) -> int:
        # A reader pool made before the target's max_connections was known has no room yet.
        waiting = asyncio.create_task(pool.borrow(APP, 5))
        await asyncio.sleep(0)
        assert pool.stats.borrow_waiters == 1
        pool.resize(2, 0)
        return opener.number(await asyncio.wait_for(waiting, 2))

    assert run(test, cap=0) == 1


class Line:
    """What a session's callbacks saw of its ticket (the way the proxy's sessions wait in line)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.conns: list[DbConnection] = []

    def served(self, name: str) -> Callable[[DbConnection], None]:
        def served(conn: DbConnection) -> None:
            self.seen.append(f"{name}: served")
            self.conns.append(conn)

        return served

    def failed(self, name: str) -> Callable[[BaseException], None]:
        return lambda exc: self.seen.append(f"{name}: {type(exc).__name__}")


def test_a_ticket_is_served_by_callback_in_the_call_that_gives_a_connection_back() -> None:
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        held = await pool.borrow(APP, 1)
        line = Line()
        pool.wait(APP, 5, line.served("a"), line.failed("a"))
        assert pool.stats.borrow_waiters == 1
        pool.release(held, reusable=True)
        # No event loop turn between: the connection is lent and counted when the callback runs.
        return [*line.seen, line.conns == [held], held in pool.borrowed, pool.stats.borrow_waiters]

    assert run(test, cap=1) == ["a: served", True, True, 0]


def test_one_timer_fails_each_ticket_at_its_own_deadline_whatever_the_order_they_came_in() -> None:
    async def test(pool: Pool, opener: Opener) -> list[str]:
        await pool.borrow(APP, 1)
        line = Line()
        # The pool's one timer is set for the first deadline, then moved earlier for the second.
        pool.wait(APP, 0.6, line.served("long"), line.failed("long"))
        pool.wait(APP, 0.1, line.served("short"), line.failed("short"))
        pool.wait(APP, None, line.served("forever"), line.failed("forever"))
        assert await eventually(lambda: len(line.seen) == 1, timeout=0.4)
        assert await eventually(lambda: len(line.seen) == 2, timeout=2)
        assert pool.stats.borrow_waiters == 1  # the one without a deadline waits on
        return line.seen

    assert run(test, cap=1) == ["short: BorrowTimeout", "long: BorrowTimeout"]


def test_a_cancelled_ticket_leaves_the_line_and_is_never_served() -> None:
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        held = await pool.borrow(APP, 1)
        line = Line()
        gone = pool.wait(APP, 5, line.served("gone"), line.failed("gone"))
        pool.wait(APP, 5, line.served("next"), line.failed("next"))
        pool.cancel(gone)
        assert pool.stats.borrow_waiters == 1
        pool.release(held, reusable=True)
        return line.seen

    assert run(test, cap=1) == ["next: served"]


def test_a_ticket_is_served_at_once_when_a_connection_can_be_opened_and_failed_when_the_pool_closes() -> None:
    async def test(pool: Pool, opener: Opener) -> list[str]:
        line = Line()
        pool.wait(APP, 5, line.served("room"), line.failed("room"))  # a connection is opened for it
        assert await eventually(lambda: len(line.seen) == 1)
        pool.wait(APP, 5, line.served("full"), line.failed("full"))
        pool.close_all()
        pool.wait(APP, 5, line.served("late"), line.failed("late"))
        return line.seen

    assert run(test, cap=1) == ["room: served", "full: PoolClosed", "late: PoolClosed"]


def test_a_borrower_cancelled_as_it_was_served_gives_the_connection_back() -> None:
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        held = await pool.borrow(APP, 1)
        waiting = asyncio.create_task(pool.borrow(APP, 5))
        await asyncio.sleep(0)
        pool.release(held, reusable=True)  # served: its task has not run yet
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return [held in pool.borrowed, pool.idle_count(), pool.stats.borrow_waiters]

    assert run(test, cap=1) == [False, 1, 0]


def test_a_held_pool_lends_nothing_not_even_an_idle_connection_until_resumed() -> None:
    # While a replicated target's writer is looked for, an idle connection may be to the writer
    # just lost (its FATAL not read yet): borrows wait in line, then are served in order.
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        idle = await pool.borrow(APP, 1)
        pool.release(idle, reusable=True)
        pool.hold()
        assert pool.borrow_now(APP) is None
        line = Line()
        pool.wait(APP, 5, line.served("a"), line.failed("a"))
        pool.wait(APP, 5, line.served("b"), line.failed("b"))
        await asyncio.sleep(0.05)
        seen_while_held = list(line.seen)
        pool.resume()
        assert await eventually(lambda: len(line.seen) == 2)
        return [seen_while_held, line.seen, line.conns[0] is idle, len(opener.opened)]

    assert run(test) == [[], ["a: served", "b: served"], True, 2]


def test_a_borrow_held_past_its_timeout_fails_with_borrow_timeout() -> None:
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        pool.hold()
        with pytest.raises(BorrowTimeout):
            await pool.borrow(APP, 0.05)
        return [len(opener.opened), pool.stats.borrow_waiters]

    assert run(test) == [0, 0]


def test_a_connection_opened_as_the_pool_was_held_is_parked_and_its_borrow_waits_at_the_head() -> None:
    # It was being opened before the writer was lost: it may be to the lost one.
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        opener.gate = asyncio.Event()
        line = Line()
        pool.wait(APP, 5, line.served("first"), line.failed("first"))  # its connection is opening
        await asyncio.sleep(0)
        pool.hold()
        pool.wait(APP, 5, line.served("second"), line.failed("second"))
        opener.gate.set()
        await asyncio.sleep(0.05)
        seen_while_held = [list(line.seen), pool.idle_count(), pool.stats.borrow_waiters]
        pool.resume()
        assert await eventually(lambda: len(line.seen) == 2)
        return [seen_while_held, line.seen, line.conns[0] is opener.opened[0]]

    assert run(test) == [[[], 1, 2], ["first: served", "second: served"], True]


def test_a_dead_connection_that_holds_the_pool_stops_the_borrow_before_the_next_idle_one() -> None:
    # The proxy holds the pool when a dead connection was the writer's (its loss): the idle ones
    # behind it are to the same writer.
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        first, second = await pool.borrow(APP, 1), await pool.borrow(APP, 1)
        pool.release(first, reusable=True)
        pool.release(second, reusable=True)
        second.reader.feed_data(b"E")  # the most recently used one is lent first: it is dead
        pool.on_dead = lambda conn: pool.hold()
        lent_at_once = pool.borrow_now(APP)
        line = Line()
        pool.wait(APP, 5, line.served("waits"), line.failed("waits"))
        await asyncio.sleep(0.05)
        return [lent_at_once, line.seen, pool.idle_count(), len(opener.opened)]

    assert run(test) == [None, [], 1, 2]


def test_a_dead_connection_that_holds_the_pool_stops_the_line_before_anything_is_opened() -> None:
    async def test(pool: Pool, opener: Opener) -> list[Any]:
        conn = await pool.borrow(APP, 1)
        pool.release(conn, reusable=True)
        conn.reader.feed_data(b"E")
        pool.on_dead = lambda conn: pool.hold()
        line = Line()
        pool.wait(APP, 5, line.served("waits"), line.failed("waits"))
        await asyncio.sleep(0.05)
        return [line.seen, pool.total, pool.stats.borrow_waiters, len(opener.opened)]

    assert run(test) == [[], 0, 1, 1]


def test_sessions_borrow_with_one_key_object_per_database_user_and_tls() -> None:
    # Two logins parse their own strings: the pool's dict then finds its key by identity.
    first = pool_key("".join(["ap", "p"]), "app_user", True)
    second = pool_key("".join(["a", "pp"]), "app_user", True)
    assert first is second
    assert pool_key("app", "app_user", False) is not first
    assert pool_key("app", "app_user", False) == PoolKey("app", "app_user", tls=False)
