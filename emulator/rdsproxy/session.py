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
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any, Final, NoReturn

from emulator.rdsproxy import texts
from emulator.rdsproxy.client import ClientProtocol
from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.dbconn import BORROW_TRIES, Credentials, DatabaseError, DbConnection, PoolKey, pool_key
from emulator.rdsproxy.lending import Lender, LostBeforeUse, Pin, align, borrow, give_back
from emulator.rdsproxy.login import CancelRequested, ClientStream, Login, Refused, login, welcome
from emulator.rdsproxy.pool import BorrowTimeout, Pool, PoolClosed, Ticket
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Frontend
from emulator.rdsproxy.protocol.parameters import UNREPORTED, SessionParameters
from emulator.rdsproxy.protocol.pinning import (
    REASON_PARSE,
    PinRule,
    function_call_reason,
    loads_library,
    pin_reason,
    plain,
    plain_query,
)
from emulator.rdsproxy.protocol.prepared import PreparedStatements
from emulator.rdsproxy.protocol.routing import Expect, Expected, ResponseRouter
from emulator.rdsproxy.protocol.server import IDLE, relay
from emulator.rdsproxy.protocol.statements import StatementNames, copies_from_client, resets_parameters
from emulator.rdsproxy.proxylog import ProxyLog
from emulator.rdsproxy.stats import RequestLatency, Stats
from emulator.rdsproxy.target import Target

# Requests that end at ReadyForQuery: the latency metrics measure each one.
# (Sets of kinds are kind_tables, read per message.)
_REQUESTS: Final = m.kind_table(Frontend.QUERY, Frontend.FUNCTION_CALL, Frontend.SYNC)
# Messages that would start work on a database connection.
_STARTS_WORK: Final = m.kind_table(
    Frontend.QUERY,
    Frontend.PARSE,
    Frontend.BIND,
    Frontend.EXECUTE,
    Frontend.DESCRIBE,
    Frontend.FUNCTION_CALL,
)
_COPY_ENDS: Final = m.kind_table(Frontend.COPY_DONE, Frontend.COPY_FAIL)


def _runs_on_server(kind: int, frame: m.Frame) -> bool:
    """The message needs a database connection (a statement's Close does not; a portal's does)."""
    return bool(_STARTS_WORK[kind]) or (kind == Frontend.CLOSE and frame.raw[5:6] == b"P")


# A client that reads slower than its database connection answers holds the connection back here.
_WRITE_BUFFER_HIGH: Final = 1 << 20
# A client that keeps sending while one of its messages waits (for a borrow) is read until this much
# is buffered, then paused: pausing at once would cost two system calls per waiting request, and a
# client that waits for its answer sends nothing more anyway.
_READ_BUFFER_HIGH: Final = 1 << 18


# What a READ_ONLY endpoint's client is told at login, where the writer's values differ: its
# connections are to hot standbys, opened with read-only transactions as their default.
_READ_ONLY_REPORTED: Final = {"default_transaction_read_only": "on", "in_hot_standby": "on"}


def _hidden(raw: bytes) -> bytes | None:
    return None


class SessionEnd(Exception):
    """The client connection is over (already told why, when there was anything to tell)."""


@dataclass(frozen=True)
class SessionDeps:
    """What a session needs from the proxy around it."""

    config: ProxyConfig
    stats: Stats
    log: ProxyLog
    pool: Lender
    target: Target
    statement_names: StatementNames
    tls_context: ssl.SSLContext | None
    # Called once when the session is over.
    ended: Callable[[ClientSession], None]
    # A READ_ONLY endpoint's sessions: what their connections report differs from the writer's.
    read_only: bool = False

    # -- what login asks (login.Authority) -------------------------------------------------------

    def credentials_for(self, user: str) -> Credentials | None:
        return self.target.credentials_for(user)

    def secret_key_for(self, access_key_id: str) -> str | None:
        return self.target.secret_key_for(access_key_id)


class ClientSession:
    """A client connection from login to close, and the database connection it has borrowed, if any."""

    def __init__(self, deps: SessionDeps, protocol: ClientProtocol) -> None:
        self.deps = deps
        # The client's connection: its writes too go through it (StreamWriter's methods, without one).
        self.protocol = protocol
        # RDS Proxy logs client connections with a 32-bit number.
        self.id = random.getrandbits(32)
        host, port = (protocol.get_extra_info("peername") or ("?", "?"))[:2]
        self.peer = f"{host}:{port}"
        self.login = Login("", "", tls=False)
        self.tls = False  # the login's, read on every request (Login is a Python object)
        self.parameters = SessionParameters({}, {})
        self.prepared = PreparedStatements(
            deps.statement_names, self._send, self._to_client, lambda: self.parameters.key
        )
        self.rule = PinRule(exempt_set_local=deps.config.exempt_set_local)
        self.backend: DbConnection | None = None
        # After an error the proxy itself reported (a lost transaction): skip to the client's Sync.
        self.skip_until_sync = False
        self.lost_transaction: bytes | None = None
        self.pinned: str | None = None
        # The session LOADed a library into its server session: no reset can undo that.
        self.loaded_library = False
        self.established = False
        self.started = monotonic()
        self.last_activity = self.started
        # Why the connection ends (the log line's reason), once known.
        self.close_reason: str | None = None
        self.latency = RequestLatency(deps.stats)
        # The client's messages for the server, sent together (one write) when a chunk is handled.
        self._out: list[bytes] = []
        self._drain_task: asyncio.Task[None] | None = None
        # The client's next messages wait for the server's answer to what was sent (set when it came):
        # after COPY FROM STDIN they are COPY data or messages as the answer tells; after a RESET the
        # proxy puts the client's parameters back first.
        self._held: asyncio.Future[None] | None = None
        self._held_until: Callable[[DbConnection], bool] | None = None
        self._closing = False
        self._frames = m.FrameReader(deps.config.max_message_bytes)
        # Set when the client's messages stop (its end, or why the session ends): run() awaits it.
        self._over: asyncio.Future[None] | None = None
        # A message that must wait (for a borrow, for held messages) and those behind it are taken
        # by this task; the client is read meanwhile only up to _READ_BUFFER_HIGH.
        self._waiting: asyncio.Task[None] | None = None
        # Or, for the commonest wait, the message's place in the pool's line (no task: the pool calls
        # back), with the message.
        self._ticket: Ticket | None = None
        self._parked: m.Frame | None = None
        self._reading_paused = False
        # A connection lent at once but not yet given the client's session parameters.
        self._unaligned: DbConnection | None = None
        self._key: PoolKey | None = None
        # What a borrowed connection calls back (bound methods, made at the first borrow: reading
        # one makes a new object each time).
        self._sinks: tuple[Callable[[bytes], None], Callable[[BaseException], None]] | None = None

    @property
    def router(self) -> ResponseRouter:
        """The borrowed connection's queue of answers due (only while one is borrowed)."""
        assert self.backend is not None
        return self.backend.state.router

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        stats = self.deps.stats
        stats.client_connections_received += 1
        try:
            if await self._start():
                await self._serve()
        except m.ProtocolViolation as exc:
            self._fatal(texts.PROTOCOL_VIOLATION, str(exc))
            self._closing_because(f"The client sent an invalid message: {exc}.")
        except (SessionEnd, CancelRequested):
            pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError, OSError):
            pass
        finally:
            await self._cleanup()

    async def _start(self) -> bool:
        deps = self.deps
        config = deps.config
        stream = ClientStream(self.protocol, timeout=float(config.client_login_timeout))
        try:
            async with asyncio.timeout(config.client_login_timeout):
                self.login = await login(stream, deps, self._debug)
                self.tls = self.login.tls
        except TimeoutError:
            deps.log.client_refused(self, texts.LOGIN_TIMEOUT.format(seconds=config.client_login_timeout))
            return False
        except Refused as refusal:
            self._fatal(refusal.code, refusal.message)
            if refusal.auth:
                deps.stats.client_connections_setup_failed_auth += 1
            deps.log.client_refused(self, refusal.message)
            return False
        await deps.target.wait_ready(config.borrow_timeout)
        try:
            self.parameters = await welcome(
                stream,
                self.login,
                deps.target,
                key=self.id & 0x7FFFFFFF,
                reported=_READ_ONLY_REPORTED if deps.read_only else None,
            )
        except Refused as refusal:
            deps.log.client_refused(self, refusal.message)
            return False
        self.established = True
        deps.stats.client_opened(tls=self.tls)
        deps.log.client_connected(self)
        return True

    def _debug(self, text: str) -> None:
        self.deps.log.debug(f"[clientConnection={self.id}] {text}")

    def _fatal(self, code: str, message: str, **extra: str) -> None:
        if not self.protocol.is_closing():
            self.protocol.write(m.error_response("FATAL", code, message, **extra))

    # -- the client's messages ------------------------------------------------------------------

    async def _serve(self) -> None:
        """Until the client leaves or the session ends: each chunk the client sends is handled in the
        event loop's callback (_received), without a task, unless a message must wait."""
        self._over = asyncio.get_running_loop().create_future()
        protocol = self.protocol
        protocol.attach(self._received, self._client_gone)
        leftover = protocol.take_pending()
        if leftover:
            self._received(leftover)
        if protocol.at_eof:
            self._client_gone(None)
        await self._over

    def _client_gone(self, exc: BaseException | None) -> None:
        self._stop_serving(None)

    def _stop_serving(self, exc: BaseException | None) -> None:
        """No more of the client's messages: run() goes on with exc raised, or returns."""
        self.protocol.detach()
        self._leave_line()
        over = self._over
        if over is not None and not over.done():
            if exc is None:
                over.set_result(None)
            else:
                over.set_exception(exc)

    def _received(self, data: bytes) -> None:
        self.last_activity = monotonic()
        frames = self._frames
        frames.feed(data)
        if self._waiting is None and self._ticket is None:
            self._take_frames()
        elif not self._reading_paused and frames.buffered() > _READ_BUFFER_HIGH:
            # The waiting task takes them; meanwhile, a client that sends a lot is read no more.
            self._pause_reading()

    def _take_frames(self) -> None:
        """Every complete message, in order, at once; from the first that must wait, _wait_for."""
        reader = self._frames
        try:
            while (frame := reader.next_frame()) is not None:
                if not self._dispatch_now(frame):
                    self._flush()
                    self._wait_for(frame)
                    return
        except Exception as exc:  # noqa: BLE001 - it ends the session: run() reports it
            self._end_with(exc)
            return
        self._frames_handled()

    def _wait_for(self, frame: m.Frame) -> None:
        """The message, and those behind it, wait: in the pool's line when only a database connection
        is missing (nearly every wait), else in a task that awaits what is missing."""
        pool = self.deps.pool
        # (A READ_ONLY endpoint's pools choose a replica first: their borrows wait in a task too.)
        only_a_borrow = self._held is None and self.backend is None and self._unaligned is None
        if not only_a_borrow or not isinstance(pool, Pool):
            self._waiting = asyncio.get_running_loop().create_task(self._wait_then_go_on(frame))
            return
        self._parked = frame
        timeout = self.deps.config.borrow_timeout
        ticket = pool.wait(self._pool_key(), timeout, self._served, self._unserved)
        if not ticket.done:  # (it may have been served at once)
            self._ticket = ticket

    def _served(self, conn: DbConnection) -> None:
        """The pool lent the waiting message a connection: it and those behind it go on."""
        frame = self._take_parked()
        if frame is None:
            # Nothing waits for it any more (the session is ending): back to the pool, unused.
            self.deps.pool.release(conn, reusable=True)
            return
        if not self._fits(conn):
            # Another client's session parameters were left on it: aligning them takes a round trip.
            self._unaligned = conn
            self._waiting = asyncio.get_running_loop().create_task(self._wait_then_go_on(frame))
            return
        try:
            self._attach(conn)
            dispatched = self._dispatch_now(frame)
            assert dispatched, "a borrowed connection was not kept"
        except Exception as exc:  # noqa: BLE001 - it ends the session: run() reports it
            self._end_with(exc)
            return
        self._go_on()

    def _unserved(self, exc: BaseException) -> None:
        """The waiting message's borrow failed: as _dispatch_waiting handles it, then the next ones."""
        frame = self._take_parked()
        if frame is None:
            return
        try:
            try:
                self._borrow_failed(exc)
            except BorrowTimeout:
                self._borrow_timed_out(frame.kind)
        except Exception as error:  # noqa: BLE001 - it ends the session: run() reports it
            self._end_with(error)
            return
        self._go_on()

    def _go_on(self) -> None:
        """The waiting is over: the client is read again, and its next messages handled."""
        self._resume_reading()
        self._take_frames()

    def _end_with(self, exc: Exception) -> None:
        """What the client sent so far goes out; the session ends with exc (run() reports it)."""
        self._flush()
        self._stop_serving(exc)

    def _take_parked(self) -> m.Frame | None:
        """The message that waited, or None when the session has stopped serving its client: a
        callback that comes after that must not attach a connection to a session being cleaned up
        (it would stay borrowed for good)."""
        frame, self._parked, self._ticket = self._parked, None, None
        if self._closing or (self._over is not None and self._over.done()):
            return None
        return frame

    def _leave_line(self) -> None:
        ticket = self._ticket
        if ticket is not None:
            self._ticket = self._parked = None
            pool = self.deps.pool
            if isinstance(pool, Pool):
                pool.cancel(ticket)

    def _pause_reading(self) -> None:
        self._reading_paused = True
        self.protocol.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self.protocol.transport.resume_reading()

    def _frames_handled(self) -> None:
        self._flush()
        # Requests the proxy answered itself may leave nothing for the server to answer.
        self._release_if_done()
        if self.protocol.backed_up(_WRITE_BUFFER_HIGH):
            # The client reads its answers slower than it sends requests: read no more until it catches up.
            self._pause_reading()
            self._waiting = asyncio.get_running_loop().create_task(self._drain_then_go_on())

    async def _wait_then_go_on(self, first: m.Frame) -> None:
        try:
            await self._dispatch_waiting(first)
            # Messages that came meanwhile are read as they are reached (the buffer grows in place).
            reader = self._frames
            while (frame := reader.next_frame()) is not None:
                if not self._dispatch_now(frame):
                    await self._dispatch_waiting(frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - it ends the session: run() reports it
            self._end_with(exc)
            return
        self._waiting = None
        self._resume_reading()
        self._frames_handled()

    async def _drain_then_go_on(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.protocol.drain()
        self._waiting = None
        self._go_on()

    async def _dispatch_waiting(self, frame: m.Frame) -> None:
        """A message that could not be handled at once: wait for what it needs, then handle it."""
        self._flush()
        held = self._held
        if held is not None:
            await held
        if not self._dispatch_now(frame):
            try:
                await self._ensure_backend()
            except BorrowTimeout:
                self._borrow_timed_out(frame.kind)
                return
            dispatched = self._dispatch_now(frame)
            assert dispatched, "a borrowed connection was not kept"

    def _dispatch_now(self, frame: m.Frame) -> bool:
        """Handle the message if nothing needs waiting for (nearly always); False, with nothing done,
        when it must wait for a held answer or for a database connection."""
        kind = frame.kind
        if kind == Frontend.TERMINATE:
            self._closing_because(texts.CLIENT_REQUESTED_CLOSE)
            raise SessionEnd
        if self._held is not None:
            if not self._held.done():
                return False
            self._held = None
        backend = self.backend
        if backend is not None and backend.state.copy_in:
            # COPY FROM STDIN: the server takes whatever comes (it fails the COPY, and the session, on
            # what is not COPY data; it ignores Flush and Sync) until CopyDone or CopyFail ends it.
            self._send(frame.raw)
            if _COPY_ENDS[kind]:
                backend.state.copy_in = False
            return True
        if backend is not None and backend.retiring and not backend.state.router.unsynced:
            # Its replica was promoted: a new request goes to no writer, it waits until the one in
            # flight is answered and the connection given back (or lost), then borrows anew. (The
            # rest of a request not yet synced goes on, as COPY data does: its answer needs it.)
            self._hold(lambda conn: False)
            return False
        if not _HANDLED[kind]:
            self._unknown_message(kind)
        skipping = self.skip_until_sync or (backend is not None and backend.state.router.skipping)
        if skipping and kind != Frontend.SYNC:
            # PostgreSQL skips every message after an error up to the next Sync: so does the proxy.
            return True
        if self.lost_transaction is not None and _STARTS_WORK[kind]:
            self._report_lost_transaction(kind)
            return True
        if backend is None and _runs_on_server(kind, frame) and self._borrow_now() is None:
            return False
        if kind == Frontend.PARSE and self._answers_first(frame):
            return False
        if _REQUESTS[kind]:
            self.latency.request_arrived(self.last_activity)  # when its bytes came
        self._handle(kind, frame)
        return True

    def _handle(self, kind: int, frame: m.Frame) -> None:
        """The message's handler (one of _HANDLED's kinds), by a chain of comparisons, commonest
        first: compiled, each is a direct call, where a table of methods makes a generic call."""
        if kind == Frontend.BIND:
            self._bind(frame)
        elif kind == Frontend.EXECUTE:
            self._execute(frame)
        elif kind == Frontend.SYNC:
            self._sync(frame)
        elif kind == Frontend.QUERY:
            self._query(frame)
        elif kind == Frontend.DESCRIBE:
            self._describe(frame)
        elif kind == Frontend.PARSE:
            self._parse(frame)
        elif kind == Frontend.CLOSE:
            self._close(frame)
        elif kind == Frontend.FUNCTION_CALL:
            self._function_call(frame)
        else:  # Flush, and COPY data outside COPY FROM STDIN (see _dispatch_now)
            self._when_borrowed(frame)

    def _borrow_timed_out(self, kind: int) -> None:
        """borrow_timeout_severity ERROR: the request fails and the session goes on."""
        if kind in (Frontend.QUERY, Frontend.EXECUTE):
            self.deps.stats.query_received(tls=self.tls)
        if kind in (Frontend.QUERY, Frontend.FUNCTION_CALL):
            self._to_client([m.ready_for_query(IDLE)])
        else:
            self.skip_until_sync = True

    def _unknown_message(self, kind: int) -> NoReturn:
        """PostgreSQL ends the session of a client that sends a message type it does not know."""
        message = f"invalid frontend message type {kind}"
        template = self.deps.target.invalid_message_fields
        if template and not self.protocol.is_closing():
            # PostgreSQL's own FATAL, file, line and routine included.
            self.protocol.write(m.error_from_fields({**template, "M": message}))
        else:
            self._fatal(texts.PROTOCOL_VIOLATION, message)
        self._closing_because(f"The client sent an invalid message: {message}.")
        raise SessionEnd

    def _send(self, raw: bytes) -> None:
        self._out.append(raw)

    def _flush(self) -> None:
        out = self._out
        if out and self.backend is not None:
            self.backend.send(out[0] if len(out) == 1 else b"".join(out))
            self.latency.request_forwarded()
        self._out.clear()

    def _to_client(self, frames: list[bytes]) -> None:
        if frames:
            self.protocol.write(b"".join(frames))

    def _query(self, frame: m.Frame) -> None:
        self.deps.stats.query_received(tls=self.tls)
        body = frame.body
        if self.deps.log.debug_enabled:
            self._debug(f"The client sent a query: {m.query_text(body)}")
        conn = self._borrowed()
        if plain_query(body):
            # Nearly every query: nothing to pin, no statement to rename, nothing to restore; its
            # text is not even decoded.
            state = conn.state
            state.router.expect(Expect.QUERY, undo=self.prepared.drop_unnamed(state))
            self._send(frame.raw)
            return
        text = m.query_text(body)
        reason = pin_reason(text, self.rule)
        if reason is not None:
            self._pin(reason)
            self.loaded_library = self.loaded_library or loads_library(text)
        query = self.prepared.query(conn.state, text)
        restores = self._parameters_restorer(conn, query.on_complete) if resets_parameters(text) else None
        entry = self.router.expect(
            Expect.QUERY,
            undo=query.undo,
            on_complete=restores.completed if restores is not None else query.on_complete,
            error=query.error,
            on_ready=restores.ready if restores is not None else None,
            holds_parameters=restores is not None,
            own=True,  # (_hold_for may wait for it)
        )
        self._send(frame.raw if query.text is text else m.simple_query(query.text))
        if restores is not None:
            # Until the client's parameters are back (RESET's ReadyForQuery and any reset after it).
            self._hold(lambda conn: conn.state.copy_in or conn.state.router.idle)
        elif query.on_complete is not None or copies_from_client(text):
            # Statements it prepares or deallocates are known once the server reports them done.
            self._hold_for(entry)

    def _answers_first(self, frame: m.Frame) -> bool:
        """A Parse the proxy would answer itself, behind requests still unanswered: it waits for
        their answers (which a Flush asks for), since one of them may fail the transaction, and
        PostgreSQL refuses every Parse in a failed transaction. Rare: drivers parse a statement
        once, before they pipeline its executions."""
        conn = self._borrowed()
        router = conn.state.router
        if router.idle:
            return False
        name, query, types = m.parse_fields(frame)
        if not self.prepared.answered_here(conn.state, name, query, types):
            return False
        if router.unsynced:
            self._send(m.FLUSH)
        self._hold(lambda conn: conn.state.copy_in or conn.state.router.idle)
        return True

    def _hold_for(self, entry: Expected) -> None:
        """The client's next messages wait for the answer to this message, or for its COPY FROM
        STDIN to begin (the server then needs the client's COPY data to go on)."""
        self._hold(lambda conn: conn.state.copy_in or not conn.state.router.waiting_for(entry))

    def _hold(self, until: Callable[[DbConnection], bool]) -> None:
        """The client's next messages wait until the server's answer says `until`."""
        self._held = asyncio.get_running_loop().create_future()
        self._held_until = until

    def _release_held(self, conn: DbConnection | None) -> None:
        held, until = self._held, self._held_until
        if held is None or held.done():
            return
        if conn is None or until is None or until(conn):
            held.set_result(None)

    def _parameters_restorer(
        self, conn: DbConnection, on_complete: Callable[[bytes], None] | None
    ) -> _Restorer:
        return _Restorer(conn, self.parameters, on_complete)

    def _execute(self, frame: m.Frame) -> None:
        # "A query including multiple statements is counted as one query": each Execute runs one.
        self.deps.stats.query_received(tls=self.tls)
        conn = self._borrowed()
        on_complete = self.prepared.execute(conn.state, frame.body)
        entry = self.router.expect(Expect.EXECUTE, on_complete=on_complete, own=on_complete is not None)
        self._send(frame.raw)
        if on_complete is not None:
            # Its statement prepares or deallocates: the client's next messages wait until the
            # server has run it, which a Flush makes it report before the client's Sync.
            self._send(m.FLUSH)
            self._hold_for(entry)

    def _sync(self, frame: m.Frame) -> None:
        self.skip_until_sync = False
        if self.backend is None:
            # Nothing of the client's is on any server session: the proxy answers for PostgreSQL.
            self._to_client([m.ready_for_query(IDLE)])
            return
        self.router.expect(Expect.SYNC)
        self._send(frame.raw)

    def _function_call(self, frame: m.Frame) -> None:
        oid, arguments = m.function_call(frame.body)
        conn = self._borrowed()
        name = self.deps.target.pinning_functions.get(oid)
        reason = function_call_reason(name, arguments, self.rule) if name is not None else None
        if reason is not None:
            self._pin(reason)
        conn.state.router.expect(Expect.FUNCTION_CALL)
        self._send(frame.raw)

    def _when_borrowed(self, frame: m.Frame) -> None:
        """Flush and COPY data mean something only on a borrowed connection."""
        if self.backend is not None:
            self._send(frame.raw)

    def _parse(self, frame: m.Frame) -> None:
        name, query, types = m.parse_fields(frame)
        if self.deps.log.debug_enabled:
            self._debug(f"The client prepared a statement{f' {name!r}' if name else ''}: {query}")
        conn = self._borrowed()
        config = self.deps.config
        if config.legacy_eqp_pinning or (name and config.pin_named_statements):
            self._pin(REASON_PARSE)
        is_plain = plain(query)
        reason = None if is_plain else pin_reason(query, self.rule)
        if reason is not None:
            if not name:
                # The unnamed statement runs with the Bind/Execute that follow: pin now.
                self._pin(reason)
            elif self.pinned is None:
                self.deps.log.would_pin(self, reason)
        self.prepared.parse(conn.state, name, query, types, pin_reason=reason, plain=is_plain, raw=frame.raw)

    def _bind(self, frame: m.Frame) -> None:
        conn = self._borrowed()
        statement = self.prepared.bind(conn.state, frame)
        if statement is not None and statement.pin_reason is not None:
            self._pin(statement.pin_reason)

    def _describe(self, frame: m.Frame) -> None:
        raw = frame.raw
        # A portal's, terminated (what drivers describe before each Execute), needs its name unread.
        if not (len(raw) > 6 and raw[5] == _PORTAL and raw[-1] == 0):
            target, name = m.parse_target(frame.body)
            if target == "S":
                self.prepared.describe_statement(self._borrowed().state, name)
                return
        self.router.expect(Expect.DESCRIBE_PORTAL)
        self._send(raw)

    def _close(self, frame: m.Frame) -> None:
        target, name = m.parse_target(frame.body)
        if target == "S":
            backend = self.backend
            self.prepared.close_statement(backend.state if backend is not None else None, name)
            return
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

    def _borrowed(self) -> DbConnection:
        """The connection the message being handled runs on (_dispatch_now borrowed it first)."""
        conn = self.backend
        assert conn is not None
        return conn

    def _pool_key(self) -> PoolKey:
        key = self._key
        if key is None:  # known once logged in, and fixed from then on: made once
            key = self._key = pool_key(self.login.database, self.login.user, self.tls)
        return key

    def _borrow_now(self) -> DbConnection | None:
        """A database connection at once, when one is idle with the client's session parameters
        and nobody waits in line; None when the borrow must wait (_ensure_backend)."""
        if self._unaligned is not None:
            return None  # lent already: _ensure_backend aligns it
        pool = self.deps.pool
        try:
            if isinstance(pool, Pool):  # the writer's pool: compiled, a direct call (once per request)
                conn = pool.borrow_now(self._pool_key())
            else:
                conn = pool.borrow_now(self._pool_key())
        except PoolClosed:
            raise SessionEnd from None
        if conn is None:
            return None
        if not self._fits(conn):
            self._unaligned = conn
            return None
        return self._attach(conn)

    def _fits(self, conn: DbConnection) -> bool:
        """The connection has this client's session parameters (keys are shared: identity first)."""
        aligned, key = conn.state.aligned, self.parameters.key
        return aligned is key or aligned == key

    async def _ensure_backend(self) -> DbConnection:
        if self.backend is not None:
            return self.backend
        # Bytes are only ever buffered for a borrowed connection (see _serve): none can be waiting here.
        assert not self._out
        deps = self.deps
        conn, self._unaligned = self._unaligned, None
        timeout = deps.config.borrow_timeout
        deadline = None if timeout is None else monotonic() + timeout
        for tries_left in range(BORROW_TRIES - 1, -1, -1):
            try:
                if conn is None:
                    left = None if deadline is None else max(0.0, deadline - monotonic())
                    conn = await borrow(deps.pool, self._pool_key(), left, self.parameters)
                else:
                    await align(deps.pool, conn, self.parameters)
                break
            except LostBeforeUse as lost:
                # Nothing of the client's reached it: borrowed again (within borrow_timeout from
                # here), once the target has heard of the loss (a lost writer is looked for, and
                # the next borrow waits for it).
                deps.log.db_closed(lost.conn, f"The database connection was lost: {lost}")
                deps.target.connection_lost(lost.conn, str(lost))
                if self._closing:
                    raise asyncio.CancelledError from None
                if not tries_left:
                    self._borrow_failed(DatabaseError({"C": texts.CONNECTION_FAILURE, "M": str(lost)}))
                conn = None
            except (BorrowTimeout, PoolClosed, DatabaseError) as exc:
                self._borrow_failed(exc)
        assert conn is not None  # (the loop ends with one, or raises)
        if self._closing:
            # The session was cleaned up while this wait finished: Python 3.11's asyncio.wait_for
            # (align's) returns a result that arrived with the cancellation instead of raising it.
            # Attached now, the connection would stay borrowed by a session that is gone.
            deps.pool.release(conn, reusable=True)
            raise asyncio.CancelledError
        return self._attach(conn)

    def _borrow_failed(self, exc: BaseException) -> NoReturn:
        """A borrow that failed: the client is told as RDS Proxy tells it; SessionEnd when the session
        ends with it, BorrowTimeout when only the request fails (borrow_timeout_severity ERROR)."""
        deps = self.deps
        if isinstance(exc, BorrowTimeout):
            deps.stats.borrow_timeouts += 1
            if deps.config.borrow_timeout_severity == "FATAL":
                self._fatal(texts.CONNECTION_EXCEPTION, texts.BORROW_TIMEOUT)
                self._closing_because(texts.BORROW_TIMEOUT_CLOSE)
                raise SessionEnd from None
            self._to_client([m.error_response("ERROR", texts.CONNECTION_EXCEPTION, texts.BORROW_TIMEOUT)])
            raise exc
        if isinstance(exc, PoolClosed):
            raise SessionEnd from None
        if isinstance(exc, DatabaseError):
            self._fatal(exc.sqlstate, texts.DATABASE_ERROR.format(error=exc))
            raise SessionEnd from None
        raise exc

    def _attach(self, conn: DbConnection) -> DbConnection:
        self.deps.stats.borrow_latency.add(conn.waited_us)
        conn.owner = self.id
        self.backend = conn
        sinks = self._sinks
        if sinks is None:
            sinks = self._sinks = (self._from_backend, self._lost_from_backend)
        conn.attach(sinks[0], sinks[1])
        if conn.frames.pending_bytes():
            self._from_backend(b"")
        return conn

    # -- the database connection's answers --------------------------------------------------------

    def _from_backend(self, data: bytes) -> None:
        """The borrowed connection's bytes, straight from the event loop (DbConnection.attach):
        to the client, and the connection back to the pool once the client's requests are answered."""
        conn = self.backend
        if conn is None:
            return
        writer = self.protocol
        conn.frames.feed(data)
        self.last_activity = now = monotonic()
        self.latency.first_answer(now)
        try:
            out = relay(conn.frames, self.router, conn.state, self.parameters)
        except m.ProtocolViolation as exc:
            self._backend_lost(conn, exc)
            return
        # One write (one send) for everything this read brought, not one per message.
        if out and not writer.is_closing():
            writer.write(b"".join(out) if len(out) > 1 else out[0])
        if conn.out_of_recovery and not conn.retiring:
            # A read-only endpoint's replica was promoted under this client: its reader pool is let
            # go, this connection too, once what the client asked is answered.
            conn.retiring = True
            self.deps.target.left_recovery(conn.instance)
        if conn.retiring and conn.state.router.settled:
            # Answered: a clean connection goes back to its pool, which closes it (messages held
            # for this answer go on, and borrow anew); one in a transaction or pinned is closed
            # (the client is told as when a connection is lost).
            if self._release_if_done():
                self._release_held(None)
            else:
                conn.close()
            return
        if self._held is not None:
            self._release_held(conn)
        if not self._release_if_done() and self.protocol.backed_up(_WRITE_BUFFER_HIGH):
            # The client reads slower than the server answers: hold the server until it catches up.
            conn.pause_reading()
            self._drain_task = asyncio.get_running_loop().create_task(self._resume_when_drained(conn))

    async def _resume_when_drained(self, conn: DbConnection) -> None:
        with contextlib.suppress(ConnectionError):
            await self.protocol.drain()
        conn.resume_reading()

    def _release_if_done(self) -> bool:
        """Everything the client sent is answered and synced, outside a transaction, unpinned: back to
        the pool."""
        conn = self.backend
        if conn is None or self.pinned is not None or not conn.state.clean:
            return False
        self.backend = None
        conn.detach()
        pool = self.deps.pool
        if isinstance(pool, Pool):  # as in _borrow_now
            pool.release(conn, reusable=True)
        else:
            pool.release(conn, reusable=True)
        return True

    def _lost_from_backend(self, exc: BaseException) -> None:
        conn = self.backend
        if conn is not None:
            self._backend_lost(conn, exc)

    def _backend_lost(self, conn: DbConnection, exc: BaseException) -> None:
        """The database connection died under this client (restart, failover, terminated backend)."""
        in_flight = not conn.state.router.idle
        in_transaction = conn.txn_status != IDLE
        self.backend = None
        self._release_held(None)
        conn.detach()
        self.deps.pool.release(conn, reusable=False)
        self.deps.log.db_closed(conn, f"The database connection was lost: {exc}")
        if conn.state.ended_by_fatal:
            # The server ended the session for what the client sent (its FATAL reached the client):
            # the client's session ends with it, as on a direct connection.
            self._closing_because(texts.TCP_CLOSED)
            self.protocol.close()
            return
        # Not the client's doing: the database (or the writer of a replicated target) may be gone.
        self.deps.target.connection_lost(conn, str(exc))
        # What the server said as it ended the connection (a shutdown's 57P01), held back from the
        # client: the proxy's own error tells it instead.
        detail = (
            {"D": texts.DATABASE_ENDED.format(reason=conn.state.fatal_reason)} if conn.state.fatal else {}
        )
        if self.pinned is not None:
            # A pinned session's state lived on that connection and is gone: end the session.
            self._fatal(texts.CONNECTION_FAILURE, texts.PINNED_CONNECTION_LOST, **detail)
            self._closing_because(texts.PINNED_CONNECTION_LOST)
            self.protocol.close()
            return
        if not in_flight and not in_transaction:
            return  # between requests (a pinned session's only): nothing of the client's was lost
        message = texts.LOST_MID_REQUEST if in_flight else texts.LOST_MID_TRANSACTION
        if self.deps.config.failover_error_severity == "FATAL":
            self._fatal(texts.CONNECTION_FAILURE, message, **detail)
            self._closing_because(message)
            self.protocol.close()
            return
        error = m.error_response("ERROR", texts.CONNECTION_FAILURE, message, **detail)
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
            "application_name": self.parameters.wanted.get("application_name", ""),
            "tls": self.tls,
            "established": self.established,
            "idle_seconds": round(monotonic() - self.last_activity, 3),
            "db_connection": backend.id if backend else None,
            "backend_pid": backend.process_id if backend else None,
            "transaction_status": backend.txn_status.decode() if backend else None,
            "awaiting": backend.state.router.pending() if backend else [],
            "unsynced": backend.state.router.unsynced if backend else False,
            "skipping_until_sync": self.skip_until_sync or bool(backend and backend.state.router.skipping),
            "pinned": self.pinned,
            "prepared_statements": len(self.prepared.catalogue),
            # The client reads slower than its database connection answers: that connection waits.
            "db_reading_paused": backend.reading_paused if backend else False,
        }

    # -- ending ---------------------------------------------------------------------------------

    def expired(self, now: float) -> str | None:
        """Why the proxy must close this client now, if it must: idle for idle_client_timeout (idle:
        no request outstanding either way), or older than the maximum client connection life (closed
        between requests)."""
        config = self.deps.config
        if not self.established or self.close_reason is not None:
            return None
        backend = self.backend
        if backend is not None and not backend.state.router.idle:
            return None  # a request is being answered: the client is waiting, not idle
        if now - self.last_activity > config.idle_client_timeout:
            return texts.IDLE_CLIENT_CLOSE
        if now - self.started > config.max_client_connection_lifetime:
            return texts.CLIENT_LIFETIME_CLOSE
        return None

    def close(self, reason: str) -> None:
        """The proxy ends the connection, without an error message, at once: a TLS client that is
        frozen (a Lambda environment) would never answer a TLS close, so the socket is just cut."""
        self._closing_because(reason)
        self.protocol.transport.abort()

    def _closing_because(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason

    async def _cleanup(self) -> None:
        if self._closing:
            return
        self._closing = True
        deps = self.deps
        conn = self.backend
        self.backend = None
        if self._drain_task is not None:
            self._drain_task.cancel()
        if self._held is not None:
            self._held.cancel()
        if self._waiting is not None and self._waiting is not asyncio.current_task():
            self._waiting.cancel()
        self._leave_line()
        self.protocol.detach()
        if self._unaligned is not None:
            # Lent at once, then never used: nothing of the client's is on it.
            deps.pool.release(self._unaligned, reusable=True)
            self._unaligned = None
        # The client is gone now, whatever the database connection still takes to be given back.
        if not self.protocol.is_closing():
            self.protocol.close()
        if self.established:
            deps.stats.client_closed(tls=self.tls)
            if self.pinned is not None:
                deps.stats.pin_ended()
            deps.log.client_closed(self, self.close_reason or texts.TCP_CLOSED)
        deps.ended(self)
        if conn is not None:
            # Back to stream reads: the rollback or reset in give_back, and silence while pooled.
            conn.detach()
            pin = Pin.NONE if self.pinned is None else Pin.UNRESETTABLE if self.loaded_library else Pin.PINNED
            await give_back(deps.pool, deps.target, deps.log, conn, pin=pin)


_PORTAL: Final = ord("P")  # a Describe's or Close's target

# The handler of each client message kind (one table for every session: a dict of bound methods per
# session cost 600 bytes of each idle client).
# The message kinds a client may send after its login (see ClientSession._handle).
_HANDLED: Final = m.kind_table(
    Frontend.QUERY,
    Frontend.PARSE,
    Frontend.BIND,
    Frontend.DESCRIBE,
    Frontend.EXECUTE,
    Frontend.CLOSE,
    Frontend.SYNC,
    Frontend.FLUSH,
    Frontend.FUNCTION_CALL,
    Frontend.COPY_DATA,
    Frontend.COPY_DONE,
    Frontend.COPY_FAIL,
)


class _Restorer:
    """A RESET (or DISCARD ALL) sets the connection's parameters back to its defaults, which are not
    the client's: PostgreSQL would keep the client's startup choices. Once the server has answered the
    query, and only if a reset took effect, the proxy sets the client's parameters again; the client
    gets the ReadyForQuery of that restoration instead of the query's (with the final transaction
    status), and no ParameterStatus for values it already has. Sent only after the answer, never
    pipelined behind the query: a multi-statement query sent behind a failed DISCARD ALL in an aborted
    transaction crashes PostgreSQL 15's backend."""

    def __init__(
        self, conn: DbConnection, parameters: SessionParameters, on_complete: Callable[[bytes], None] | None
    ) -> None:
        self.conn = conn
        self.parameters = parameters
        self.on_complete = on_complete
        self.reset = False

    def completed(self, raw: bytes) -> None:
        if raw[5:].startswith((b"RESET", b"DISCARD ALL")):
            self.reset = True
        if self.on_complete is not None:
            self.on_complete(raw)

    def ready(self, raw: bytes) -> list[bytes]:
        if not self.reset:
            return [raw]
        state = self.conn.state
        state.router.expect(Expect.QUERY, forward=False, ready=True, error=_hidden)
        self.conn.writer.write(m.simple_query(self.parameters.restoration()))
        if UNREPORTED in self.parameters.wanted:
            state.unreported[UNREPORTED] = self.parameters.wanted[UNREPORTED]
        return []
