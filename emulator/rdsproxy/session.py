"""One client connection after login: transaction-level multiplexing.

The client borrows a database connection at its first message that needs one and gives it back
when the server reports ReadyForQuery with status idle and nothing the client sent is still
unanswered. Named prepared statements belong to the client, not to a database connection: they
are re-prepared (under a content-derived name) on whichever connection the client borrows.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from emulator.rdsproxy import texts
from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.dbconn import Credentials, DatabaseError, DbConnection, PoolKey
from emulator.rdsproxy.login import CancelRequested, ClientStream, Login, Refused, login
from emulator.rdsproxy.pool import BorrowTimeout, Pool, PoolClosed
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend, Frontend
from emulator.rdsproxy.protocol.parameters import UNREPORTED, SessionParameters
from emulator.rdsproxy.protocol.pinning import REASON_PARSE, PinRule, clears_prepared_statements, pin_reason
from emulator.rdsproxy.protocol.routing import Expect, ResponseRouter
from emulator.rdsproxy.protocol.server import relay
from emulator.rdsproxy.protocol.statements import StatementCatalogue, StatementNames
from emulator.rdsproxy.proxylog import ProxyLog
from emulator.rdsproxy.stats import Stats
from emulator.rdsproxy.target import Target

_PARSE_COMPLETE = m.frame(Backend.PARSE_COMPLETE)
_CLOSE_COMPLETE = m.frame(Backend.CLOSE_COMPLETE)
# Requests that end at ReadyForQuery: the latency metrics measure each one.
_REQUESTS = frozenset({Frontend.QUERY, Frontend.FUNCTION_CALL, Frontend.SYNC})
# Messages that would start work on a database connection.
_STARTS_WORK = frozenset(
    {
        Frontend.QUERY,
        Frontend.PARSE,
        Frontend.BIND,
        Frontend.EXECUTE,
        Frontend.DESCRIBE,
        Frontend.FUNCTION_CALL,
    }
)
_COPY = frozenset({Frontend.COPY_DATA, Frontend.COPY_DONE, Frontend.COPY_FAIL})
# A client that reads slower than its database connection answers holds the connection back here.
_WRITE_BUFFER_HIGH = 1 << 20


class SessionEnd(Exception):
    """The client connection is over (already told why, when there was anything to tell)."""


@dataclass(frozen=True)
class SessionDeps:
    """What a session needs from the proxy around it."""

    config: ProxyConfig
    stats: Stats
    log: ProxyLog
    pool: Pool
    target: Target
    statement_names: StatementNames
    tls_context: ssl.SSLContext | None
    # Called once when the session is over.
    ended: Callable[[ClientSession], None]

    # -- what login asks (login.Authority) -------------------------------------------------------

    def credentials_for(self, user: str) -> Credentials | None:
        return self.target.credentials_for(user)

    def secret_key_for(self, access_key_id: str) -> str | None:
        return self.target.secret_key_for(access_key_id)


class ClientSession:
    """A client connection from login to close, and the database connection it has borrowed, if any."""

    def __init__(self, deps: SessionDeps, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.deps = deps
        self.reader = reader
        self.writer = writer
        # RDS Proxy logs client connections with a 32-bit number.
        self.id = random.getrandbits(32)
        host, port = (writer.get_extra_info("peername") or ("?", "?"))[:2]
        self.peer = f"{host}:{port}"
        self.login = Login("", "", tls=False)
        self.parameters = SessionParameters({}, {})
        self.statements = StatementCatalogue(deps.statement_names)
        self.rule = PinRule(exempt_set_local=deps.config.exempt_set_local)
        self.backend: DbConnection | None = None
        self.router = ResponseRouter()
        self.unsynced = False
        self.skip_until_sync = False
        self.lost_transaction: bytes | None = None
        self.pinned: str | None = None
        self.established = False
        self.last_activity = time.monotonic()
        self.latency = RequestLatency(deps.stats)
        self._out = bytearray()
        self._drain_task: asyncio.Task[None] | None = None
        self._closing = False
        self._handlers: dict[int, Callable[[m.Frame], Awaitable[None]]] = {
            Frontend.QUERY: self._query,
            Frontend.PARSE: self._parse,
            Frontend.BIND: self._bind,
            Frontend.DESCRIBE: self._describe,
            Frontend.EXECUTE: self._execute,
            Frontend.CLOSE: self._close,
            Frontend.SYNC: self._sync,
            Frontend.FLUSH: self._when_borrowed,
            Frontend.FUNCTION_CALL: self._function_call,
            Frontend.COPY_DATA: self._when_borrowed,
            Frontend.COPY_DONE: self._when_borrowed,
            Frontend.COPY_FAIL: self._when_borrowed,
        }

    @property
    def tls(self) -> bool:
        return self.login.tls

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        stats = self.deps.stats
        stats.client_connections_received += 1
        try:
            if await self._start():
                await self._serve()
        except m.ProtocolViolation as exc:
            self._fatal(texts.PROTOCOL_VIOLATION, str(exc))
        except (SessionEnd, CancelRequested):
            pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError, OSError):
            pass
        finally:
            await self._cleanup()

    async def _start(self) -> bool:
        deps = self.deps
        stream = ClientStream(self.reader, self.writer, timeout=float(deps.config.idle_client_timeout))
        try:
            self.login = await login(stream, deps, self._debug)
        except Refused as refusal:
            self._fatal(refusal.code, refusal.message)
            if refusal.auth:
                deps.stats.client_connections_setup_failed_auth += 1
            deps.log.client_refused(self, refusal.message)
            return False
        await deps.target.wait_ready(float(deps.config.connection_borrow_timeout))
        self.parameters = SessionParameters(self.login.params, deps.target.baseline_params)
        out = [m.authentication(m.AUTH_OK)]
        out += [m.parameter_status(name, value) for name, value in self.parameters.seen.items()]
        out += [m.backend_key_data(self.id & 0x7FFFFFFF, random.getrandbits(31)), m.ready_for_query(b"I")]
        self.writer.write(b"".join(out))
        self.established = True
        deps.stats.client_opened(tls=self.tls)
        deps.log.client_connected(self)
        return True

    def _debug(self, text: str) -> None:
        self.deps.log.debug(f"[clientConnection={self.id}] {text}")

    def _fatal(self, code: str, message: str) -> None:
        if not self.writer.is_closing():
            self.writer.write(m.error_response("FATAL", code, message))

    # -- the client's messages ------------------------------------------------------------------

    async def _serve(self) -> None:
        frames = m.FrameReader(self.deps.config.max_message_bytes)
        while True:
            data = await self.reader.read(262144)
            if not data:
                return
            self.last_activity = time.monotonic()
            frames.feed(data)
            try:
                for frame in frames.frames():
                    await self._dispatch(frame)
            finally:
                self._flush()
            # Requests the proxy answered itself may leave nothing for the server to answer.
            self._release_if_done()
            if self.writer.transport.get_write_buffer_size() > _WRITE_BUFFER_HIGH:
                await self.writer.drain()

    async def _dispatch(self, frame: m.Frame) -> None:
        kind = frame.kind
        if kind == Frontend.TERMINATE:
            raise SessionEnd
        if self.skip_until_sync and kind != Frontend.SYNC:
            return
        if self.lost_transaction is not None and kind in _STARTS_WORK:
            self._report_lost_transaction(kind)
            return
        if kind in _REQUESTS:
            self.latency.request_arrived()
        await self._handlers.get(kind, self._opaque)(frame)

    def _send(self, raw: bytes) -> None:
        self._out += raw

    def _flush(self) -> None:
        if self._out and self.backend is not None:
            self.backend.writer.write(bytes(self._out))
            self.latency.request_forwarded()
        self._out.clear()

    def _to_client(self, frames: list[bytes]) -> None:
        if frames:
            self.writer.write(b"".join(frames))

    async def _query(self, frame: m.Frame) -> None:
        self.deps.stats.query_received(tls=self.tls)
        text = m.query_text(frame.body)
        reason = pin_reason(text, self.rule)
        await self._ensure_backend()
        if reason is not None:
            self._pin(reason)
            if clears_prepared_statements(text) and self.backend is not None:
                self.backend.state.statements.clear()
        self.router.expect(Expect.QUERY)
        self._send(frame.raw)

    async def _execute(self, frame: m.Frame) -> None:
        await self._ensure_backend()
        self.router.expect(Expect.EXECUTE)
        self._send(frame.raw)
        self.unsynced = True

    async def _sync(self, frame: m.Frame) -> None:
        self.skip_until_sync = False
        self.unsynced = False
        if self.backend is None and self.router.idle:
            self._to_client([m.ready_for_query(b"I")])
            return
        await self._ensure_backend()
        self.router.expect(Expect.SYNC)
        self._send(frame.raw)

    async def _function_call(self, frame: m.Frame) -> None:
        await self._ensure_backend()
        self.router.expect(Expect.FUNCTION_CALL)
        self._send(frame.raw)

    async def _when_borrowed(self, frame: m.Frame) -> None:
        """Flush and COPY data mean something only on a borrowed connection."""
        if self.backend is not None:
            self._send(frame.raw)

    async def _opaque(self, frame: m.Frame) -> None:
        # Anything else travels as an opaque frame.
        await self._ensure_backend()
        self._send(frame.raw)

    def _statement_error(self, code: str, message: str) -> None:
        """Answer a statement-level error the server would have given, and skip to Sync as it would."""
        self._to_client(self.router.answer(m.error_response("ERROR", code, message)))
        self.skip_until_sync = True

    async def _parse(self, frame: m.Frame) -> None:
        name, query, types = m.parse_parse(frame.body)
        await self._ensure_backend()
        self.unsynced = True
        config = self.deps.config
        if config.legacy_eqp_pinning or (name and config.pin_named_statements):
            self._pin(REASON_PARSE)
        reason = pin_reason(query, self.rule)
        if not name:
            # The unnamed statement runs with the Bind/Execute that follow: pin now.
            if reason is not None:
                self._pin(reason)
            self.router.expect(Expect.PARSE)
            self._send(frame.raw)
            return
        if reason is not None and self.pinned is None:
            self.deps.log.would_pin(self, reason)
        if name in self.statements:
            self._statement_error("42P05", f'prepared statement "{name}" already exists')
            return
        statement = self.statements.prepare(name, query, types, reason)
        backend = self.backend
        assert backend is not None
        backend_name = statement.backend_name
        if backend_name in backend.state.statements:
            self._to_client(self.router.answer(_PARSE_COMPLETE))
            return

        def failed() -> None:
            backend.state.statements.discard(backend_name)
            self.statements.forget(name)

        backend.state.statements.add(backend_name)
        self.router.expect(Expect.PARSE, on_error=failed)
        self._send(m.parse_message(backend_name, query, types))

    def _prepared_on_backend(self, name: str) -> str | None:
        """The backend name for the client's statement, preparing it on this connection if needed."""
        statement = self.statements.get(name)
        if statement is None:
            self._statement_error("26000", f'prepared statement "{name}" does not exist')
            return None
        backend = self.backend
        assert backend is not None
        backend_name = statement.backend_name
        if backend_name not in backend.state.statements:
            backend.state.statements.add(backend_name)
            self.router.expect(
                Expect.PARSE, forward=False, on_error=lambda: backend.state.statements.discard(backend_name)
            )
            self._send(m.parse_message(backend_name, statement.query, statement.types))
        return backend_name

    async def _bind(self, frame: m.Frame) -> None:
        _, name, _ = m.bind_statement(frame.body)
        await self._ensure_backend()
        self.unsynced = True
        if not name:
            self.router.expect(Expect.BIND)
            self._send(frame.raw)
            return
        backend_name = self._prepared_on_backend(name)
        if backend_name is None:
            return
        statement = self.statements.get(name)
        if statement is not None and statement.pin_reason is not None:
            self._pin(statement.pin_reason)
        self.router.expect(Expect.BIND)
        self._send(m.rename_bind(frame.body, backend_name))

    async def _describe(self, frame: m.Frame) -> None:
        target, name = m.parse_target(frame.body)
        await self._ensure_backend()
        self.unsynced = True
        if target == "S" and name:
            backend_name = self._prepared_on_backend(name)
            if backend_name is None:
                return
            self.router.expect(Expect.DESCRIBE_STATEMENT)
            self._send(m.target_message(Frontend.DESCRIBE, "S", backend_name))
        else:
            self.router.expect(Expect.DESCRIBE_STATEMENT if target == "S" else Expect.DESCRIBE_PORTAL)
            self._send(frame.raw)

    async def _close(self, frame: m.Frame) -> None:
        target, name = m.parse_target(frame.body)
        self.unsynced = True
        if target == "S" and name:
            # Never pins: the client forgets the statement; the database connection keeps its copy for
            # the next client that prepares the same text. Closing an unknown name is no error.
            self.statements.forget(name)
            self._to_client(self.router.answer(_CLOSE_COMPLETE))
            return
        await self._ensure_backend()
        self.router.expect(Expect.CLOSE)
        self._send(frame.raw)

    def _pin(self, reason: str) -> None:
        """From now until the client disconnects, this database connection is the client's alone."""
        if self.pinned is not None or self.backend is None:
            return
        self.pinned = reason
        self.deps.stats.pin_started()
        self.deps.log.pinned(self, self.backend, reason)

    def _report_lost_transaction(self, kind: int) -> None:
        error = self.lost_transaction
        assert error is not None
        self.lost_transaction = None
        self._to_client([error])
        if kind in (Frontend.QUERY, Frontend.FUNCTION_CALL):
            self._to_client([m.ready_for_query(b"I")])
        else:
            self.skip_until_sync = True

    # -- borrowing ------------------------------------------------------------------------------

    async def _ensure_backend(self) -> None:
        if self.backend is not None:
            return
        # Bytes are only ever buffered for a borrowed connection (see _serve): none can be waiting here.
        assert not self._out
        deps = self.deps
        timeout = float(deps.config.connection_borrow_timeout)
        try:
            conn = await deps.pool.borrow(PoolKey(self.login.database, self.login.user, self.tls), timeout)
        except BorrowTimeout:
            deps.stats.borrow_timeouts += 1
            if deps.config.borrow_timeout_severity == "FATAL":
                self._fatal(texts.CONNECTION_EXCEPTION, texts.BORROW_TIMEOUT)
                deps.log.client_closed(self, "The proxy timed out waiting to acquire a database connection.")
                raise SessionEnd from None
            self._to_client([m.error_response("ERROR", texts.CONNECTION_EXCEPTION, texts.BORROW_TIMEOUT)])
            raise
        except PoolClosed:
            raise SessionEnd from None
        except DatabaseError as exc:
            self._fatal(exc.sqlstate, texts.DATABASE_ERROR.format(error=exc))
            raise SessionEnd from None
        try:
            if conn.state.aligned != self.parameters.key:
                await self._align(conn)
        except DatabaseError as exc:
            deps.pool.release(conn, reusable=False)
            self._fatal(exc.sqlstate, texts.DATABASE_ERROR.format(error=exc))
            raise SessionEnd from None
        except (OSError, asyncio.IncompleteReadError):
            deps.pool.release(conn, reusable=False)
            raise
        conn.owner = self.id
        self.backend = conn
        conn.attach(self._from_backend, self._lost_from_backend)
        if conn.frames.pending_bytes():
            self._from_backend(b"")

    async def _align(self, conn: DbConnection) -> None:
        """Give the borrowed connection this client's session parameters, when they differ."""
        parameters = self.parameters
        state = conn.state
        sets = parameters.alignment(state.params, state.unreported)
        if sets is not None:
            await conn.run_quietly(sets)
            if UNREPORTED in parameters.wanted:
                state.unreported[UNREPORTED] = parameters.wanted[UNREPORTED]
            parameters.aligned(state.params)
        state.aligned = parameters.key

    # -- the database connection's answers --------------------------------------------------------

    def _from_backend(self, data: bytes) -> None:
        """The borrowed connection's bytes, straight from the event loop (DbConnection.attach):
        to the client, and the connection back to the pool once the client's requests are answered."""
        conn = self.backend
        if conn is None:
            return
        writer = self.writer
        conn.frames.feed(data)
        self.latency.first_answer()
        try:
            out = relay(conn.frames, self.router, conn.state, self.parameters)
        except m.ProtocolViolation as exc:
            self._backend_lost(conn, exc)
            return
        # One write (one send) for everything this read brought, not one per message.
        if out and not writer.is_closing():
            writer.write(b"".join(out) if len(out) > 1 else out[0])
        if not self._release_if_done() and writer.transport.get_write_buffer_size() > _WRITE_BUFFER_HIGH:
            # The client reads slower than the server answers: hold the server until it catches up.
            conn.pause_reading()
            self._drain_task = asyncio.get_running_loop().create_task(self._resume_when_drained(conn))

    async def _resume_when_drained(self, conn: DbConnection) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        conn.resume_reading()

    def _release_if_done(self) -> bool:
        """Everything the client sent is answered, outside a transaction, unpinned: back to the pool."""
        conn = self.backend
        busy = not self.router.idle or self.unsynced or self.pinned is not None
        if conn is None or busy or conn.txn_status != b"I":
            return False
        self.backend = None
        conn.detach()
        self.deps.pool.release(conn, reusable=True)
        return True

    def _lost_from_backend(self, exc: BaseException) -> None:
        conn = self.backend
        if conn is not None:
            self._backend_lost(conn, exc)

    def _backend_lost(self, conn: DbConnection, exc: BaseException) -> None:
        """The database connection died under this client (restart, failover, terminated backend)."""
        in_flight = not self.router.idle
        in_transaction = conn.txn_status != b"I"
        self.backend = None
        conn.detach()
        self.deps.pool.release(conn, reusable=False)
        self.deps.log.db_closed(conn, f"The database connection was lost: {exc}")
        error = m.error_response(
            "ERROR",
            texts.CONNECTION_FAILURE,
            "The database connection closed in the middle of a request."
            if in_flight
            else "The database connection closed in the middle of a transaction.",
        )
        self.router = ResponseRouter()
        self.unsynced = False
        if self.pinned is not None:
            # A pinned session's state lived on that connection and is gone: end the session.
            self._fatal(texts.CONNECTION_FAILURE, "The database connection of this pinned session was lost.")
            self.writer.close()
            return
        if in_flight:
            self._to_client([error, m.ready_for_query(b"I")])
        elif in_transaction:
            # The client believes it is inside a transaction: its next statement must fail, not run alone.
            self.lost_transaction = error

    def describe(self) -> dict[str, Any]:
        """What the session is doing, for the /sessions endpoint (like PgBouncer's SHOW CLIENTS)."""
        backend = self.backend
        return {
            "client_connection": self.id,
            "peer": self.peer,
            "user": self.login.user,
            "database": self.login.database,
            "tls": self.tls,
            "established": self.established,
            "idle_seconds": round(time.monotonic() - self.last_activity, 3),
            "db_connection": backend.id if backend else None,
            "backend_pid": backend.process_id if backend else None,
            "transaction_status": backend.txn_status.decode() if backend else None,
            "awaiting": self.router.pending(),
            "unsynced": self.unsynced,
            "skipping_until_sync": self.skip_until_sync,
            "pinned": self.pinned,
            "prepared_statements": len(self.statements),
            # The client reads slower than its database connection answers: that connection waits.
            "db_reading_paused": backend.reading_paused if backend else False,
        }

    # -- ending ---------------------------------------------------------------------------------

    async def close_idle(self) -> None:
        """idle_client_timeout: the proxy closes the TCP connection, without an error message."""
        self.deps.log.client_closed(
            self, "The client connection was idle for longer than the idle client timeout."
        )
        self.writer.close()

    async def _cleanup(self) -> None:
        if self._closing:
            return
        self._closing = True
        deps = self.deps
        conn = self.backend
        self.backend = None
        if self._drain_task is not None:
            self._drain_task.cancel()
        if conn is not None:
            # Back to stream reads: the rollback below, and silence while pooled.
            conn.detach()
            await self._give_back(conn)
        if self.established:
            deps.stats.client_closed(tls=self.tls)
            if self.pinned is not None:
                deps.stats.pin_ended()
            deps.log.client_closed(self, "The client requested that the connection close.")
        deps.ended(self)
        if not self.writer.is_closing():
            self.writer.close()

    async def _give_back(self, conn: DbConnection) -> None:
        """What the client left on its borrowed connection must not reach the next client."""
        pool = self.deps.pool
        log = self.deps.log
        if self.pinned is not None:
            log.db_closed(conn, "The client session that pinned this database connection ended.")
            pool.release(conn, reusable=False)
            return
        if not self.router.idle:
            log.db_closed(
                conn,
                "The client connection that borrowed this database connection from the connection pool "
                "was closed in the middle of a request.",
            )
            pool.release(conn, reusable=False)
            return
        if conn.txn_status != b"I":
            try:
                await asyncio.wait_for(conn.run_quietly("ROLLBACK"), 5)
            except (DatabaseError, OSError, TimeoutError, asyncio.IncompleteReadError):
                pool.release(conn, reusable=False)
                return
        pool.release(conn, reusable=conn.txn_status == b"I")


class RequestLatency:
    """QueryResponseLatency and QueryDatabaseResponseLatency of the request being answered: from its
    arrival (and from its forwarding to the database) to the database's first bytes."""

    __slots__ = ("_forwarded", "_received", "_stats")

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._received: float | None = None
        self._forwarded: float | None = None

    def request_arrived(self) -> None:
        if self._received is None:
            self._received = time.monotonic()

    def request_forwarded(self) -> None:
        if self._received is not None and self._forwarded is None:
            self._forwarded = time.monotonic()

    def first_answer(self) -> None:
        forwarded = self._forwarded
        if forwarded is None:
            return
        now = time.monotonic()
        self._stats.query_database_latency.add(int((now - forwarded) * 1e6))
        if self._received is not None:
            self._stats.query_response_latency.add(int((now - self._received) * 1e6))
        self._received = None
        self._forwarded = None
