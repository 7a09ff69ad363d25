"""The connection pool: a cap, idle connections per (database, user), and a FIFO borrow queue.

Modelled on psycopg_pool's waiting queue: a borrow that cannot be served at once waits in line with
a deadline; every freed slot serves the head of the line first. While the target is down, the
borrow keeps trying to open a connection until its deadline, as RDS Proxy queues requests during a
failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Final

from emulator.rdsproxy.dbconn import DatabaseUnavailable, DbConnection, PoolKey
from emulator.rdsproxy.stats import Stats

log = logging.getLogger("emulator.rdsproxy.pool")
MAX_LIFETIME_SECONDS: Final = 24 * 3600  # RDS Proxy recycles database connections after about a day


class PoolError(Exception):
    """A borrow could not be served."""


class BorrowTimeout(PoolError):
    """No database connection became available before connection_borrow_timeout."""


class PoolClosed(PoolError):
    """The proxy is shutting down: nothing more is lent."""


class Ticket:
    """A borrow's place in line: the pool calls `served` with a connection lent to it, or `failed`
    with why not, once, unless the ticket was cancelled first. Callbacks, not a future: a session
    waiting in line then costs no task, no future and no timer of its own (the pool keeps one timer
    for every deadline)."""

    def __init__(
        self,
        key: PoolKey,
        deadline: float,
        served: Callable[[DbConnection], None],
        failed: Callable[[BaseException], None],
        started: float,
    ) -> None:
        self.key = key
        self.deadline = deadline
        self.started = started
        self.served = served
        self.failed = failed
        self.done = False
        # Only an opening that waits to retry (rare) waits for the ticket itself.
        self._settled: asyncio.Future[None] | None = None

    def serve(self, conn: DbConnection) -> None:
        self.end()
        self.served(conn)

    def fail(self, exc: BaseException) -> None:
        self.end()
        self.failed(exc)

    def end(self) -> None:
        """Nothing more comes to this ticket (served, failed, or given up)."""
        self.done = True
        settled = self._settled
        if settled is not None and not settled.done():
            settled.set_result(None)

    def settled(self) -> asyncio.Future[None]:
        """Done once the ticket is served, failed or cancelled."""
        if self._settled is None:
            self._settled = asyncio.get_running_loop().create_future()
            if self.done:
                self._settled.set_result(None)
        return self._settled


Opener = Callable[[PoolKey], Awaitable[DbConnection]]


class Pool:
    """Database connections by (database, user, TLS), at most `cap` of them, lent one borrower at a time."""

    def __init__(
        self, opener: Opener, stats: Stats, *, idle_keep: int = 0, idle_seconds: float = 300
    ) -> None:
        self._opener = opener
        self.stats = stats
        self.cap = 0
        self.idle_keep = idle_keep
        self.idle_seconds = idle_seconds
        # Oldest first, most recently used last (lists: mypyc calls their pop and append natively).
        self._idle: dict[PoolKey, list[DbConnection]] = {}
        self._waiters: deque[Ticket] = deque()
        # Borrows whose connection the database refused for now (full, or down) and is being opened
        # again: a connection given back meanwhile serves them first, they were in line before.
        self._retrying: deque[Ticket] = deque()
        # One timer for the waiters' deadlines, due at the earliest it knows of.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf
        self._total = 0  # open or opening
        self.borrowed: set[DbConnection] = set()
        self.closed = False
        # While held (a replicated target's writer is being looked for), nothing is lent: an idle
        # connection may be to the writer just lost, its FATAL not read yet. Borrows wait in line.
        self.held = False
        # Told of every connection found dead while pooled (the target watches for its writer's loss).
        self.on_dead: Callable[[DbConnection], None] | None = None

    def resize(self, cap: int, idle_keep: int) -> None:
        """New limits (the target's max_connections is known, or changed): borrows waiting for room
        are served at once when there is more."""
        grew = cap > self.cap
        self.cap, self.idle_keep = cap, idle_keep
        if grew:
            self._dispatch()

    # -- borrowing ---------------------------------------------------------------------------------

    def borrow_now(self, key: PoolKey) -> DbConnection | None:
        """An idle connection at once, when nobody is waiting in line; None when the borrow must wait."""
        if self.closed:
            raise PoolClosed
        if self._waiters or self.held:
            return None
        # (A dead one found here may be the writer's loss: the pool is then held, see _dead.)
        while not self.held and (conn := self._take_idle(key)) is not None:
            if conn.silent_since_idle():
                self._lend(conn, 0)
                return conn
            # It died while idle (database restart): never hand it out, try the next one.
            self._dead(conn)
        return None

    async def borrow(self, key: PoolKey, timeout: float | None) -> DbConnection:
        """A connection for key, waiting in line up to timeout seconds (None: as long as it takes)."""
        conn = self.borrow_now(key)
        if conn is not None:
            return conn
        future: asyncio.Future[DbConnection] = asyncio.get_running_loop().create_future()

        def served(conn: DbConnection) -> None:
            if future.done():  # the borrower gave up in the same instant: the connection goes back
                self.release(conn, reusable=True)
            else:
                future.set_result(conn)

        def failed(exc: BaseException) -> None:
            if not future.done():
                future.set_exception(exc)

        ticket = self.wait(key, timeout, served, failed)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result(), reusable=True)
            raise
        finally:
            self.cancel(ticket)

    def wait(
        self,
        key: PoolKey,
        timeout: float | None,
        served: Callable[[DbConnection], None],
        failed: Callable[[BaseException], None],
    ) -> Ticket:
        """Wait in line for a connection for key, up to timeout seconds (None: as long as it takes):
        `served` is called with it (already lent), or `failed` with BorrowTimeout, PoolClosed or why
        the database refused; possibly before this returns."""
        now = monotonic()
        deadline = now + timeout if timeout is not None else math.inf
        ticket = Ticket(key, deadline, served, failed, now)
        if self.closed:
            ticket.fail(PoolClosed())
            return ticket
        self._waiters.append(ticket)
        self._time(deadline)
        self._dispatch()
        return ticket

    def hold(self) -> None:
        """Lend nothing until resume(): borrows wait in line (up to their timeout) meanwhile."""
        self.held = True

    def resume(self) -> None:
        """Lend again: the line is served at once."""
        self.held = False
        self._dispatch()

    def cancel(self, ticket: Ticket) -> None:
        """The borrower gives up its place in line (nothing is served to it after this)."""
        if ticket.done:
            return
        ticket.end()
        with contextlib.suppress(ValueError):
            self._waiters.remove(ticket)
        self._publish()

    def _give(self, ticket: Ticket, conn: DbConnection) -> None:
        self._lend(conn, int((monotonic() - ticket.started) * 1e6))
        ticket.serve(conn)

    def _time(self, deadline: float) -> None:
        """The deadline timer is due no later than this deadline."""
        if deadline >= self._timer_due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = deadline
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, deadline - monotonic()), self._expire_due
        )

    def _expire_due(self) -> None:
        """Waiters past their deadline fail with BorrowTimeout; the timer is due again at the next."""
        self._timer, self._timer_due = None, math.inf
        now = monotonic()
        due = [ticket for ticket in self._waiters if not ticket.done and ticket.deadline <= now]
        for ticket in due:
            with contextlib.suppress(ValueError):
                self._waiters.remove(ticket)
        self._publish()
        for ticket in due:
            if not ticket.done:  # (a callback before it may have ended it)
                ticket.fail(BorrowTimeout())
        later = [ticket.deadline for ticket in self._waiters if not ticket.done]
        if later:
            self._time(min(later))

    def _lend(self, conn: DbConnection, waited_us: int) -> None:
        if not conn.state.clean:
            # Never expected: every way back to the pool checks first. Counted so tests can tell.
            self.stats.lent_out_of_sync += 1
            log.error("lent database connection %s out of sync: %s", conn.id, conn.state.router.pending())
        self.borrowed.add(conn)
        self.stats.borrows += 1
        # DatabaseConnectionsBorrowLatency is the borrower's endpoint's: the session records it.
        conn.waited_us = waited_us
        self._publish()

    def _publish(self) -> None:
        """The pool's gauges, written in this one place."""
        stats = self.stats
        stats.database_connections = self._total
        stats.database_connections_borrowed = len(self.borrowed)
        stats.borrow_waiters = len(self._waiters)
        stats.note_peaks()

    def _take_idle(self, key: PoolKey) -> DbConnection | None:
        """The most recently used idle connection for key not known to be closed (still to be
        checked for silence: see _still_alive)."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # most recently used first: its cache is warm
            if not conn.closing():
                return conn
            self._close(conn)
        return None

    @staticmethod
    def _still_alive(conn: DbConnection) -> bool:
        """An idle connection must have stayed silent: anything it said (the FATAL a database sends
        when it shuts down, or EOF) means it is dead. This is how idle clients survive a restart:
        the dead connection is dropped at the borrow, before anyone uses it."""
        return not conn.closing() and conn.silent_since_idle()

    def _any_idle(self) -> DbConnection | None:
        oldest: DbConnection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].last_used < oldest.last_used):
                oldest = idle[0]
        if oldest is not None:
            self._idle[oldest.key].pop(0)
        return oldest

    def _dispatch(self) -> None:
        """Serve the head of the line while a connection or a free slot exists (and nothing holds it)."""
        if self._retrying:
            self._serve_retrying()
        while self._waiters and not self.closed and not self.held:
            ticket = self._waiters[0]
            if ticket.done:
                self._waiters.popleft()
                continue
            conn = self._take_idle(ticket.key)
            if conn is not None:
                if not conn.silent_since_idle():
                    self._dead(conn)
                    continue
                self._waiters.popleft()
                self._give(ticket, conn)
                continue
            if self._total < self.cap:
                self._waiters.popleft()
                self._total += 1
                asyncio.get_running_loop().create_task(self._open_for(ticket))
                continue
            # Full: an idle connection for another database or user makes room.
            victim = self._any_idle()
            if victim is None:
                break
            self._close(victim)
        self._publish()

    def _serve_retrying(self) -> None:
        """Hand idle connections to borrows whose own connection the database refused for now (their
        opening gives its slot back when it sees the borrow served)."""
        for ticket in list(self._retrying):
            if ticket.done or self.held:
                continue
            conn = self._take_idle(ticket.key)
            if conn is not None:
                if not conn.silent_since_idle():
                    self._dead(conn)
                    continue
                self._retrying.remove(ticket)
                self._give(ticket, conn)

    async def _open_for(self, ticket: Ticket) -> None:
        delay = 0.05
        try:
            while True:
                try:
                    conn = await self._opener(ticket.key)
                    break
                except DatabaseUnavailable as exc:
                    # Keep trying until the borrow's own deadline, as RDS Proxy queues during a
                    # failover; a connection given back meanwhile serves the borrow instead.
                    remaining = ticket.deadline - monotonic()
                    if remaining <= 0 or ticket.done:
                        self._total -= 1
                        if not ticket.done:
                            ticket.fail(BorrowTimeout(str(exc)))
                        self._dispatch()
                        return
                    if ticket not in self._retrying:
                        self._retrying.append(ticket)
                        self._serve_retrying()
                    log.info("database unavailable, retrying in %.2f s: %s", delay, exc)
                    # Woken early when the borrow is served or given up: then no open is tried again.
                    settled = ticket.settled()
                    await asyncio.wait((settled,), timeout=min(delay, remaining))
                    if settled.done():
                        self._total -= 1
                        self._dispatch()
                        return
                    delay = min(delay * 2, 1.0)
                except Exception as exc:  # noqa: BLE001 - DatabaseError and the rest: to the borrower
                    self._total -= 1
                    if not ticket.done:
                        ticket.fail(exc)
                    self._dispatch()
                    return
        finally:
            with contextlib.suppress(ValueError):
                self._retrying.remove(ticket)
        self._publish()
        if ticket.done:  # the client gave up or timed out meanwhile: keep it for the next one
            self._park(conn, monotonic())
        elif self.held:
            # Opened before the writer was lost, it may be to the lost one: parked (a failover lets
            # it go), and the borrow waits at the head of the line, where it was.
            self._park(conn, monotonic())
            self._waiters.appendleft(ticket)
            self._time(ticket.deadline)
            self._publish()
        else:
            self._give(ticket, conn)

    # -- returning -----------------------------------------------------------------------------

    def release(self, conn: DbConnection, *, reusable: bool) -> None:
        """Back from its borrower: parked for the next one only when it is in a known-clean state."""
        self.borrowed.discard(conn)
        reusable = reusable and conn.state.clean and not conn.retiring
        now = monotonic()
        if not reusable or conn.broken or now - conn.created > MAX_LIFETIME_SECONDS:
            self._close(conn)
        else:
            self._park(conn, now)
        self._dispatch()

    def _park(self, conn: DbConnection, now: float) -> None:
        conn.last_used = now
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)

    def _close(self, conn: DbConnection) -> None:
        conn.close()
        self._forget(conn)

    def _dead(self, conn: DbConnection) -> None:
        self._close(conn)
        if self.on_dead is not None:
            self.on_dead(conn)

    def let_go(self, instance: str, *, answer_first: bool = False) -> int:
        """Close every connection to this instance (an old writer after a failover): idle ones at
        once, borrowed ones under their clients, who are told as when a connection is lost; how many.

        answer_first (a read-only endpoint's replica was promoted, alive): a borrowed connection with
        a request in flight (or not yet synced) retires instead, closed by its session once that
        request is answered. Closing it sooner would not stop what the server already runs, only
        lose the answer."""
        count = 0
        for key, idle in self._idle.items():
            keep = [conn for conn in idle if conn.instance != instance]
            for conn in idle:
                if conn.instance == instance:
                    self._close(conn)
                    count += 1
            self._idle[key] = keep
        for conn in list(self.borrowed):
            if conn.instance != instance:
                continue
            count += 1
            if answer_first and not conn.state.router.settled:
                conn.retiring = True
            else:
                conn.close()  # its session's loss callback gives it back (release) and tells the client
        self._dispatch()
        return count

    def _forget(self, conn: DbConnection) -> None:
        self._total -= 1
        self._publish()

    @property
    def total(self) -> int:
        return self._total

    @property
    def busy(self) -> int:
        """Connections borrowed or being opened, and borrows waiting in line."""
        return self._total - self.idle_count() + len(self._waiters)

    def connections(self) -> list[DbConnection]:
        """Every open connection, idle or borrowed."""
        return [conn for idle in self._idle.values() for conn in idle] + list(self.borrowed)

    def idle_count(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def drop_dead_idle(self) -> int:
        """Close the idle connections the database has ended (a restart, a failover); how many."""
        dead = 0
        for key, idle in self._idle.items():
            alive = [conn for conn in idle if self._still_alive(conn)]
            for conn in idle:
                if conn not in alive:
                    self._dead(conn)
                    dead += 1
            self._idle[key] = alive
        return dead

    def trim_idle(self) -> int:
        """Close idle connections beyond idle_keep that have been idle for idle_seconds; return how many."""
        now = monotonic()
        excess = self.idle_count() - self.idle_keep
        closed = 0
        for idle in list(self._idle.values()):
            while excess > 0 and idle and now - idle[0].last_used >= self.idle_seconds:
                self._close(idle.pop(0))
                excess -= 1
                closed += 1
        return closed

    def close_all(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            while idle:
                self._close(idle.pop())
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_due = None, math.inf
        waiting = [*self._waiters, *self._retrying]
        self._waiters.clear()
        for ticket in waiting:
            if not ticket.done:
                ticket.fail(PoolClosed())
