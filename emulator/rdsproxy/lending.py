"""A session's dealings with the pool: borrowing a database connection made ready for the client,
and giving it back in a state fit for the next one, or not at all."""

from __future__ import annotations

import asyncio
import enum
from typing import Protocol

from emulator.rdsproxy.dbconn import SETTLE_SECONDS, DatabaseError, DbConnection, PoolKey, connection_died
from emulator.rdsproxy.protocol.parameters import UNREPORTED, SessionParameters
from emulator.rdsproxy.proxylog import ProxyLog
from emulator.rdsproxy.target import Target


class Lender(Protocol):
    """Where a session borrows: the writer's pool (READ_WRITE endpoints) or the readers' pools
    (READ_ONLY endpoints)."""

    def borrow_now(self, key: PoolKey) -> DbConnection | None: ...

    async def borrow(self, key: PoolKey, timeout: float | None) -> DbConnection: ...

    def release(self, conn: DbConnection, *, reusable: bool) -> None: ...


class Pin(enum.Enum):
    """Whether a session pinned its database connection, and whether a reset can undo it."""

    NONE = "none"
    PINNED = "pinned"
    UNRESETTABLE = "unresettable"


RELEASED_AFTER_RESET = "The database connection was released to the connection pool upon session reset."
MID_REQUEST = (
    "The client connection that borrowed this database connection from the connection pool was closed in "
    "the middle of a request."
)


async def borrow(
    pool: Lender, key: PoolKey, timeout: float | None, parameters: SessionParameters
) -> DbConnection:
    """A database connection with the client's session parameters (BorrowTimeout, PoolClosed,
    DatabaseError as the pool raises them; a connection that cannot be aligned goes back closed,
    LostBeforeUse when it died)."""
    conn = await pool.borrow(key, timeout)
    await align(pool, conn, parameters)
    return conn


class LostBeforeUse(Exception):
    """The lent connection died while it was given the client's session parameters (its server went
    away while it was pooled, and its last words had not arrived when it was lent): nothing of the
    client's reached it, so the borrow can be made again."""

    def __init__(self, conn: DbConnection, reason: str) -> None:
        super().__init__(reason)
        self.conn = conn


async def align(pool: Lender, conn: DbConnection, parameters: SessionParameters) -> None:
    """Give a lent connection the client's session parameters where they differ (DatabaseError, and
    the connection goes back closed, when it cannot be done; LostBeforeUse when it died meanwhile)."""
    if conn.closing():  # closed while it was being lent (a failover's let_go)
        pool.release(conn, reusable=False)
        raise LostBeforeUse(conn, "the database connection was closed")
    try:
        if conn.state.aligned != parameters.key:
            await asyncio.wait_for(_align(conn, parameters), SETTLE_SECONDS)
    except TimeoutError:
        pool.release(conn, reusable=False)
        raise DatabaseError({"C": "08006", "M": "the database connection did not answer"}) from None
    except BaseException as exc:
        pool.release(conn, reusable=False)
        if connection_died(exc):
            raise LostBeforeUse(conn, str(exc) or repr(exc)) from exc
        raise


async def _align(conn: DbConnection, parameters: SessionParameters) -> None:
    """Give the connection this client's session parameters, where they differ."""
    state = conn.state
    sets = parameters.alignment(state.params, state.unreported)
    if sets is not None:
        await conn.run_quietly(sets)
        if UNREPORTED in parameters.wanted:
            state.unreported[UNREPORTED] = parameters.wanted[UNREPORTED]
        parameters.aligned(state.params)
    state.aligned = parameters.key


async def give_back(pool: Lender, target: Target, log: ProxyLog, conn: DbConnection, *, pin: Pin) -> None:
    """What the client left on its borrowed connection must not reach the next client: the
    connection goes back to the pool only in a known-clean state, else it is closed."""
    if not conn.state.router.idle:
        # What RDS Proxy logs when a client leaves while its request is being answered.
        log.db_closed(conn, MID_REQUEST)
        pool.release(conn, reusable=False)
        return
    if pin is Pin.PINNED:
        # RDS Proxy resets the connection of a pinned session that ended and pools it again.
        reset = await conn.reset_session(
            init_query=target.config.init_query, unreported=target.unreported_defaults, timeout=SETTLE_SECONDS
        )
        if reset:
            log.db_released(
                conn, "The database connection was released to the connection pool upon session reset."
            )
        else:
            log.db_closed(conn, "The database connection could not be reset after its pinned session.")
        pool.release(conn, reusable=reset)
        return
    if pin is Pin.UNRESETTABLE:
        # A library loaded into the server session (LOAD) cannot be unloaded: no reset undoes it.
        log.db_closed(conn, "The client session that pinned this database connection ended.")
        pool.release(conn, reusable=False)
        return
    # In a transaction, or in the middle of an unsynced request: rolled back, never committed.
    settled = conn.state.clean or await conn.settle(SETTLE_SECONDS)
    if not settled:
        log.db_closed(conn, "The database connection could not be brought back to an idle state.")
    pool.release(conn, reusable=settled)
