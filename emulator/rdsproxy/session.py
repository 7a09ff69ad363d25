"""One client connection: startup rules, TLS, authentication, then transaction-level multiplexing.

The client borrows a database connection at its first message that needs one and gives it back
when the server reports ReadyForQuery with status idle and nothing the client sent is still
unanswered. Named prepared statements belong to the client, not to a database connection: they
are re-prepared (under a content-derived name) on whichever connection the client borrows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import random
import ssl
import time
from typing import TYPE_CHECKING, Any

from emulator.rdsproxy import texts
from emulator.rdsproxy.auth import ScramExchange, TokenRejected, md5_password, md5_salt, verify_iam_token
from emulator.rdsproxy.dbconn import CLIENT_PARAMETERS, DatabaseError, PoolKey, ServerConnection
from emulator.rdsproxy.pool import BorrowTimeout
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.pinning import REASON_PARSE, PinRule, clears_prepared_statements, pin_reason
from emulator.rdsproxy.protocol.routing import ResponseRouter

if TYPE_CHECKING:
    from emulator.rdsproxy.server import ProxyServer

_ALLOWED = {name.lower(): name for name in ("user", "database", *CLIENT_PARAMETERS)}
_PARSE_COMPLETE = m.frame(b"1")
_CLOSE_COMPLETE = m.frame(b"3")
_FALSE = ("false", "off", "0", "no")
_session_ids = itertools.count(1)


class SessionEnd(Exception):
    """The client connection is over (already told why, when there was anything to tell)."""


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class ClientSession:
    def __init__(
        self, server: ProxyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.config = server.config
        self.stats = server.stats
        self.reader = reader
        self.writer = writer
        # RDS Proxy logs client connections with a 32-bit number.
        self.id = random.getrandbits(32)
        self.serial = next(_session_ids)
        host, port = (writer.get_extra_info("peername") or ("?", "?"))[:2]
        self.peer = f"{host}:{port}"
        self.tls = False
        self.user = ""
        self.database = ""
        self.wanted: dict[str, str] = {}
        self._wanted_key: tuple[tuple[str, str], ...] = ()
        self.seen: dict[str, str] = {}
        self.backend: ServerConnection | None = None
        self.router = ResponseRouter()
        self.unsynced = False
        self.skip_until_sync = False
        self.lost_transaction: bytes | None = None
        # client name -> (backend name, query, parameter types, why running it pins or None)
        self.statements: dict[str, tuple[str, str, bytes, str | None]] = {}
        self.rule = PinRule(exempt_set_local=self.config.exempt_set_local)
        self.pinned: str | None = None
        self.last_activity = time.monotonic()
        self.established = False
        self._drain_task: asyncio.Task[None] | None = None
        self._out = bytearray()
        self._closing = False
        # When the request being answered arrived from the client, and when it went to the database.
        self._request_received: float | None = None
        self._request_forwarded: float | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        self.stats.client_connections_received += 1
        try:
            if await self._startup():
                await self._serve()
        except m.ProtocolViolation as exc:
            self._fatal(texts.PROTOCOL_VIOLATION, str(exc))
        except SessionEnd:
            pass
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            await self._cleanup()

    def _fatal(self, code: str, message: str) -> None:
        if not self.writer.is_closing():
            self.writer.write(m.error_response("FATAL", code, message))

    def _refuse(self, code: str, message: str, *, auth: bool = False) -> bool:
        self._fatal(code, message)
        if auth:
            self.stats.client_connections_setup_failed_auth += 1
        self.server.log.client_refused(self, message)
        return False

    async def _read_more(self, timeout: float | None = None) -> bytes:
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            raise SessionEnd
        return data

    # -- startup --------------------------------------------------------------------------------

    async def _startup(self) -> bool:
        startup = m.StartupReader()
        login_timeout = float(self.config.idle_client_timeout)
        while True:
            packet = startup.packet()
            if packet is None:
                startup.feed(await self._read_more(login_timeout))
                continue
            if packet.code == m.SSL_REQUEST:
                if startup.take_raw():
                    raise m.ProtocolViolation("data after SSLRequest before the TLS handshake")
                if self.tls or self.server.tls_context is None:
                    self.writer.write(b"N")
                    continue
                self.writer.write(b"S")
                await self.writer.drain()
                await self.writer.start_tls(self.server.tls_context)
                self.tls = True
                continue
            if packet.code == m.GSSENC_REQUEST:
                self.writer.write(b"N")
                continue
            if packet.code == m.CANCEL_REQUEST:
                # RDS Proxy does not support query cancellation: accepted and ignored.
                return False
            if packet.code != m.PROTOCOL_3_0:
                return self._refuse(texts.FEATURE_NOT_SUPPORTED, texts.PROTOCOL_VERSION)
            return await self._login(packet.params)

    def _check_parameters(self, params: dict[str, str]) -> str | None:
        for name, value in params.items():
            lower = name.lower()
            if lower == "replication":
                if value.lower() not in _FALSE:
                    return texts.REPLICATION
            elif lower == "options":
                return texts.COMMAND_LINE_OPTIONS
            elif lower not in _ALLOWED:
                return texts.UNSUPPORTED_OPTION.format(name=name)
        return None

    async def _login(self, params: dict[str, str]) -> bool:
        refusal = self._check_parameters(params)
        if refusal is not None:
            return self._refuse(texts.FEATURE_NOT_SUPPORTED, refusal)
        self.user = params.get("user", "")
        if not self.user:
            return self._refuse(texts.INVALID_AUTHORIZATION, texts.MISSING_USER)
        self.database = params.get("database") or self.user
        if self.config.require_tls and not self.tls:
            return self._refuse(texts.INVALID_AUTHORIZATION, texts.TLS_REQUIRED, auth=True)
        iam = self.config.iam_auth == "REQUIRED"
        if iam and not self.tls:
            return self._refuse(texts.INVALID_AUTHORIZATION, texts.IAM_NEEDS_TLS, auth=True)
        credentials = self.server.credentials_for(self.user)
        if credentials is None:
            return self._refuse(
                texts.INVALID_AUTHORIZATION, texts.NO_CREDENTIALS.format(user=self.user), auth=True
            )
        ok = await (self._iam() if iam else self._password(credentials.password))
        if not ok:
            return False
        await self.server.target_ready(float(self.config.connection_borrow_timeout))
        for name in CLIENT_PARAMETERS:
            chosen = next((v for k, v in params.items() if k.lower() == name.lower()), None)
            baseline = self.server.baseline_params.get(name)
            value = chosen if chosen is not None else baseline
            if value is not None:
                self.wanted[name] = _canonical(name, value)
        self._wanted_key = tuple(self.wanted.items())
        self.seen = {
            **self.server.baseline_params,
            **{k: v for k, v in self.wanted.items() if k != "extra_float_digits"},
        }
        out = [m.authentication(m.AUTH_OK)]
        out += [m.parameter_status(name, value) for name, value in self.seen.items()]
        out += [m.backend_key_data(self.serial & 0x7FFFFFFF, random.getrandbits(31)), m.ready_for_query(b"I")]
        self.writer.write(b"".join(out))
        self.established = True
        self.stats.client_connections_setup_succeeded += 1
        self.stats.client_connections += 1
        if self.tls:
            self.stats.client_connections_tls += 1
        self.stats.note_peaks()
        self.server.log.client_connected(self)
        return True

    async def _next_auth_message(self, frames: m.FrameReader) -> m.Frame:
        while True:
            for frame in frames.frames():
                if frame.type != b"p":
                    raise m.ProtocolViolation(f"expected a password message, got {frame.type!r}")
                return frame
            frames.feed(await self._read_more(float(self.config.idle_client_timeout)))

    async def _iam(self) -> bool:
        # The proxy must see the token itself: it asks for the password in clear, over TLS only.
        self.writer.write(m.authentication(m.AUTH_CLEARTEXT))
        frames = m.FrameReader(max_message=65536)
        token = m.read_cstring((await self._next_auth_message(frames)).body)[0]
        try:
            verify_iam_token(
                token,
                user=self.user,
                endpoint_hosts=self.config.endpoint_hosts,
                port=self.config.listen_port,
                secret_for_key=self.server.secret_key_for,
            )
        except TokenRejected as why:
            self.server.log.debug(f"[clientConnection={self.id}] IAM token refused: {why}")
            return self._refuse(texts.INVALID_PASSWORD, texts.IAM_FAILED.format(user=self.user), auth=True)
        return True

    async def _password(self, password: str) -> bool:
        frames = m.FrameReader(max_message=65536)
        wrong = texts.WRONG_PASSWORD.format(user=self.user)
        if self.config.client_password_auth_type == "POSTGRES_MD5":
            salt = md5_salt()
            self.writer.write(m.authentication(m.AUTH_MD5, salt))
            sent = m.read_cstring((await self._next_auth_message(frames)).body)[0]
            if not hmac.compare_digest(sent, md5_password(self.user, password, salt)):
                return self._refuse(texts.INVALID_PASSWORD, wrong, auth=True)
            return True
        scram = ScramExchange(password)
        self.writer.write(m.auth_sasl([ScramExchange.MECHANISM]))
        mechanism, first = m.parse_sasl_initial((await self._next_auth_message(frames)).body)
        if mechanism != ScramExchange.MECHANISM:
            return self._refuse(texts.INVALID_AUTHORIZATION, texts.UNSUPPORTED_AUTH, auth=True)
        try:
            server_first = scram.first(first)
        except Exception:  # noqa: BLE001 - scramp rejects malformed client-first messages
            return self._refuse(texts.INVALID_PASSWORD, wrong, auth=True)
        self.writer.write(m.authentication(m.AUTH_SASL_CONTINUE, server_first))
        final = scram.final((await self._next_auth_message(frames)).body)
        if final is None:
            return self._refuse(texts.INVALID_PASSWORD, wrong, auth=True)
        self.writer.write(m.authentication(m.AUTH_SASL_FINAL, final))
        return True

    # -- the multiplexed session ----------------------------------------------------------------

    async def _serve(self) -> None:
        frames = m.FrameReader(self.config.max_message_bytes)
        while True:
            data = await self.reader.read(262144)
            if not data:
                return
            self.last_activity = time.monotonic()
            frames.feed(data)
            for frame in frames.frames():
                if not await self._client_message(frame):
                    self._flush()
                    return
            self._flush()
            # Requests the proxy answered itself may leave nothing for the server to answer.
            self._release_if_done()
            if self.writer.transport.get_write_buffer_size() > 1 << 20:
                await self.writer.drain()

    def _send(self, raw: bytes) -> None:
        self._out += raw

    def _flush(self) -> None:
        if self._out and self.backend is not None:
            self.backend.writer.write(bytes(self._out))
            if self._request_received is not None and self._request_forwarded is None:
                self._request_forwarded = time.monotonic()
        self._out.clear()

    def _request_arrived(self) -> None:
        if self._request_received is None:
            self._request_received = time.monotonic()

    def _to_client(self, frames: list[bytes]) -> None:
        if frames:
            self.writer.write(b"".join(frames))

    async def _client_message(self, frame: m.Frame) -> bool:
        kind = frame.type
        if kind == b"X":
            return False
        if self.skip_until_sync and kind != b"S":
            return True
        if self.lost_transaction is not None and kind in (b"Q", b"P", b"B", b"E", b"D", b"F"):
            self._report_lost_transaction(kind)
            return True
        if kind in (b"Q", b"F", b"S"):
            self._request_arrived()
        if kind == b"Q":
            self.stats.query_requests += 1
            if self.tls:
                self.stats.query_requests_tls += 1
            text = m.query_text(frame.body)
            reason = pin_reason(text, self.rule)
            await self._ensure_backend()
            if reason is not None:
                self._pin(reason)
                if clears_prepared_statements(text) and self.backend is not None:
                    self.backend.statements.clear()
            self.router.expect("Q")
            self._send(frame.raw)
        elif kind == b"P":
            await self._parse(frame)
        elif kind == b"B":
            await self._bind(frame)
        elif kind == b"D":
            await self._describe(frame)
        elif kind == b"E":
            await self._ensure_backend()
            self.router.expect("E")
            self._send(frame.raw)
            self.unsynced = True
        elif kind == b"C":
            await self._close(frame)
        elif kind == b"S":
            self.skip_until_sync = False
            self.unsynced = False
            if self.backend is None and self.router.idle:
                self._to_client([m.ready_for_query(b"I")])
            else:
                await self._ensure_backend()
                self.router.expect("S")
                self._send(frame.raw)
        elif kind == b"H":
            if self.backend is not None:
                self._send(frame.raw)
        elif kind == b"F":
            await self._ensure_backend()
            self.router.expect("F")
            self._send(frame.raw)
        elif kind in (b"d", b"c", b"f"):
            if self.backend is not None:
                self._send(frame.raw)
        else:
            # Anything else travels as an opaque frame.
            await self._ensure_backend()
            self._send(frame.raw)
        return True

    def _statement_error(self, code: str, message: str) -> None:
        """Answer a statement-level error the server would have given, and skip to Sync as it would."""
        self._to_client(self.router.answer(m.error_response("ERROR", code, message)))
        self.skip_until_sync = True

    async def _parse(self, frame: m.Frame) -> None:
        name, query, types = m.parse_parse(frame.body)
        await self._ensure_backend()
        self.unsynced = True
        if self.config.legacy_eqp_pinning or (name and self.config.pin_named_statements):
            self._pin(REASON_PARSE)
        reason = pin_reason(query, self.rule)
        if not name:
            # The unnamed statement runs with the Bind/Execute that follow: pin now.
            if reason is not None:
                self._pin(reason)
            self.router.expect("P")
            self._send(frame.raw)
            return
        if reason is not None and self.pinned is None:
            self.server.log.info(
                f"[{self.server.log.endpoint}] [clientConnection={self.id}] If this prepared statement runs, "
                f"the client session will be pinned. Reason: {reason}"
            )
        if name in self.statements:
            self._statement_error("42P05", f'prepared statement "{name}" already exists')
            return
        backend_name = self.server.statement_name(query, types)
        self.statements[name] = (backend_name, query, types, reason)
        backend = self.backend
        assert backend is not None
        if backend_name in backend.statements:
            self._to_client(self.router.answer(_PARSE_COMPLETE))
            return

        def failed() -> None:
            backend.statements.discard(backend_name)
            self.statements.pop(name, None)

        backend.statements.add(backend_name)
        self.router.expect("P", on_error=failed)
        self._send(m.parse_message(backend_name, query, types))

    def _prepared_on_backend(self, name: str) -> str | None:
        """The backend name for the client's statement, preparing it on this connection if needed."""
        known = self.statements.get(name)
        if known is None:
            self._statement_error("26000", f'prepared statement "{name}" does not exist')
            return None
        backend_name, query, types, _ = known
        backend = self.backend
        assert backend is not None
        if backend_name not in backend.statements:
            backend.statements.add(backend_name)
            self.router.expect("P", forward=False, on_error=lambda: backend.statements.discard(backend_name))
            self._send(m.parse_message(backend_name, query, types))
        return backend_name

    async def _bind(self, frame: m.Frame) -> None:
        _, statement, _ = m.bind_statement(frame.body)
        await self._ensure_backend()
        self.unsynced = True
        if statement:
            backend_name = self._prepared_on_backend(statement)
            if backend_name is None:
                return
            reason = self.statements[statement][3]
            if reason is not None:
                self._pin(reason)
            self.router.expect("B")
            self._send(m.rename_bind(frame.body, backend_name))
        else:
            self.router.expect("B")
            self._send(frame.raw)

    async def _describe(self, frame: m.Frame) -> None:
        target, name = m.parse_target(frame.body)
        await self._ensure_backend()
        self.unsynced = True
        if target == "S" and name:
            backend_name = self._prepared_on_backend(name)
            if backend_name is None:
                return
            self.router.expect("DS")
            self._send(m.target_message(b"D", "S", backend_name))
        else:
            self.router.expect("DS" if target == "S" else "DP")
            self._send(frame.raw)

    async def _close(self, frame: m.Frame) -> None:
        target, name = m.parse_target(frame.body)
        self.unsynced = True
        if target == "S" and name:
            # Never pins: the client forgets the statement; the database connection keeps its copy for
            # the next client that prepares the same text. Closing an unknown name is no error.
            self.statements.pop(name, None)
            self._to_client(self.router.answer(_CLOSE_COMPLETE))
            return
        await self._ensure_backend()
        self.router.expect("C")
        self._send(frame.raw)

    def _pin(self, reason: str) -> None:
        """From now until the client disconnects, this database connection is the client's alone."""
        if self.pinned is not None or self.backend is None:
            return
        self.pinned = reason
        self.stats.database_connections_pinned += 1
        self.stats.note_peaks()
        self.server.log.warn(
            f"[proxyEndpoint={self.server.log.endpoint}] [clientConnection={self.id}] The client session was "
            f"pinned to the database connection [dbConnection={self.backend.id}] for the remainder of the "
            f"session. The proxy can't reuse this connection until the session ends. Reason: {reason}"
        )

    def _report_lost_transaction(self, kind: bytes) -> None:
        error = self.lost_transaction
        assert error is not None
        self.lost_transaction = None
        self._to_client([error])
        if kind in (b"Q", b"F"):
            self._to_client([m.ready_for_query(b"I")])
        else:
            self.skip_until_sync = True

    # -- borrowing ------------------------------------------------------------------------------

    async def _ensure_backend(self) -> None:
        if self.backend is not None:
            return
        # Bytes are only ever buffered for a borrowed connection (see _serve): none can be waiting here.
        assert not self._out
        key = PoolKey(self.database, self.user, self.tls)
        try:
            conn = await self.server.pool.borrow(key, float(self.config.connection_borrow_timeout))
        except BorrowTimeout:
            self.stats.borrow_timeouts += 1
            if self.config.borrow_timeout_severity == "FATAL":
                self._fatal(texts.CONNECTION_EXCEPTION, texts.BORROW_TIMEOUT)
                self.server.log.client_closed(
                    self, "The proxy timed out waiting to acquire a database connection."
                )
                raise SessionEnd from None
            self._to_client([m.error_response("ERROR", texts.CONNECTION_EXCEPTION, texts.BORROW_TIMEOUT)])
            raise
        except DatabaseError as exc:
            self._fatal(exc.sqlstate, texts.DATABASE_ERROR.format(error=exc))
            raise SessionEnd from None
        try:
            if conn.aligned != self._wanted_key:
                await self._align(conn)
        except DatabaseError as exc:
            self.server.pool.release(conn, reusable=False)
            self._fatal(exc.sqlstate, texts.DATABASE_ERROR.format(error=exc))
            raise SessionEnd from None
        except (OSError, asyncio.IncompleteReadError):
            self.server.pool.release(conn, reusable=False)
            raise
        conn.owner = self.id
        self.backend = conn
        conn.attach(self._from_backend, self._lost_from_backend)
        if conn.frames.pending_bytes():
            self._from_backend(b"")

    async def _align(self, conn: ServerConnection) -> None:
        """Give the borrowed connection this client's session parameters, when they differ."""
        sets = []
        for name, value in self.wanted.items():
            current = conn.extra_float_digits if name == "extra_float_digits" else conn.params.get(name)
            if current != value:
                sets.append(f"SET {name} = {_quote(value)}")
        if sets:
            await conn.run_quietly("; ".join(sets))
            if "extra_float_digits" in self.wanted:
                conn.extra_float_digits = self.wanted["extra_float_digits"]
            # Remember the server's spelling (ISO -> "ISO, MDY") so the next borrow compares equal.
            for name in self.wanted:
                if name != "extra_float_digits" and name in conn.params:
                    self.wanted[name] = conn.params[name]
            self._wanted_key = tuple(self.wanted.items())
        conn.aligned = self._wanted_key

    def _from_backend(self, data: bytes) -> None:
        """The borrowed connection's bytes, straight from the event loop (ServerConnection.attach):
        to the client, and the connection back to the pool once the client's requests are answered."""
        conn = self.backend
        if conn is None:
            return
        writer = self.writer
        router = self.router
        conn.frames.feed(data)
        if self._request_forwarded is not None:
            self._note_first_answer()
        # One write (one send) for everything this read brought, not one per message.
        out: list[bytes] = []
        try:
            if router.passthrough():
                # Everything complete goes in bulk; what is left is part of a message still coming.
                chunk, starts = conn.frames.take_complete()
                if starts:
                    self._pass_through(conn, chunk, starts, out)
            else:
                self._route_each(conn, out)
        except m.ProtocolViolation as exc:
            self._backend_lost(conn, exc)
            return
        if out and not writer.is_closing():
            writer.write(b"".join(out) if len(out) > 1 else out[0])
        if not self._release_if_done() and writer.transport.get_write_buffer_size() > 1 << 20:
            # The client reads slower than the server answers: hold the server until it catches up.
            conn.pause_reading()
            self._drain_task = asyncio.get_running_loop().create_task(self._resume_when_drained(conn))

    async def _resume_when_drained(self, conn: ServerConnection) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        conn.resume_reading()

    def _route_each(self, conn: ServerConnection, out: list[bytes]) -> None:
        """Server messages one by one, for requests whose answers the proxy must match or hide."""
        router = self.router
        for frame in conn.frames.frames():
            raw = frame.raw
            kind = raw[0]
            if kind == 0x53:  # ParameterStatus: pass on only what changes the client's view
                if self._server_parameter(conn, raw, 0):
                    out.append(raw)
                continue
            if kind == 0x5A:  # ReadyForQuery
                conn.txn_status = raw[5:6]
            out += router.route(kind, raw)

    def _server_parameter(self, conn: ServerConnection, data: bytes, start: int) -> bool:
        """The ParameterStatus at data[start:], remembered; True when the client has not seen it."""
        name, offset = m.read_cstring(data, start + 5)
        value = m.read_cstring(data, offset)[0]
        conn.params[name] = value
        conn.aligned = None
        if self.seen.get(name) == value:
            return False
        self.seen[name] = value
        return True

    def _release_if_done(self) -> bool:
        """Everything the client sent is answered, outside a transaction, unpinned: back to the pool."""
        conn = self.backend
        busy = not self.router.idle or self.unsynced or self.pinned is not None
        if conn is None or busy or conn.txn_status != b"I":
            return False
        self.backend = None
        conn.detach()
        self.server.pool.release(conn, reusable=True)
        return True

    def _lost_from_backend(self, exc: BaseException) -> None:
        conn = self.backend
        if conn is not None:
            self._backend_lost(conn, exc)

    def _pass_through(
        self, conn: ServerConnection, chunk: bytes, starts: list[int], out: list[bytes]
    ) -> None:
        """Forward a run of server messages in bulk (see ResponseRouter.passthrough): only
        ParameterStatus and ReadyForQuery are looked at, as the per-message path does."""
        kept = 0
        for index, start in enumerate(starts):
            kind = chunk[start]
            if kind == 0x53:  # ParameterStatus: pass on only what changes the client's view
                if not self._server_parameter(conn, chunk, start):
                    out.append(chunk[kept:start])
                    kept = starts[index + 1] if index + 1 < len(starts) else len(chunk)
            elif kind == 0x5A:  # ReadyForQuery
                conn.txn_status = chunk[start + 5 : start + 6]
                self.router.ready()
        out.append(chunk[kept:] if kept else chunk)

    def _note_first_answer(self) -> None:
        """The database's first bytes for the request in flight: both query latencies end here."""
        now = time.monotonic()
        assert self._request_forwarded is not None
        self.stats.query_database_latency.add(int((now - self._request_forwarded) * 1e6))
        if self._request_received is not None:
            self.stats.query_response_latency.add(int((now - self._request_received) * 1e6))
        self._request_received = None
        self._request_forwarded = None

    def _backend_lost(self, conn: ServerConnection, exc: BaseException) -> None:
        """The database connection died under this client (restart, failover, terminated backend)."""
        in_flight = not self.router.idle
        in_transaction = conn.txn_status != b"I"
        self.backend = None
        conn.detach()
        self.server.pool.release(conn, reusable=False)
        self.server.log.db_closed(conn, f"The database connection was lost: {exc}")
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
            "user": self.user,
            "database": self.database,
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
        self.server.log.client_closed(
            self, "The client connection was idle for longer than the idle client timeout."
        )
        self.writer.close()

    async def _cleanup(self) -> None:
        if self._closing:
            return
        self._closing = True
        conn = self.backend
        self.backend = None
        if self._drain_task is not None:
            self._drain_task.cancel()
        if conn is not None:
            # Back to stream reads: the rollback below, and silence while pooled.
            conn.detach()
            await self._give_back(conn)
        if self.established:
            self.stats.client_connections -= 1
            self.stats.client_connections_closed += 1
            if self.tls:
                self.stats.client_connections_tls -= 1
            if self.pinned is not None:
                self.stats.database_connections_pinned -= 1
            self.server.log.client_closed(self, "The client requested that the connection close.")
        self.server.forget(self)
        if not self.writer.is_closing():
            self.writer.close()

    async def _give_back(self, conn: ServerConnection) -> None:
        """What the client left on its borrowed connection must not reach the next client."""
        if self.pinned is not None:
            self.server.log.db_closed(conn, "The client session that pinned this database connection ended.")
            self.server.pool.release(conn, reusable=False)
            return
        if not self.router.idle:
            self.server.log.db_closed(
                conn,
                "The client connection that borrowed this database connection from the connection pool "
                "was closed in the middle of a request.",
            )
            self.server.pool.release(conn, reusable=False)
            return
        if conn.txn_status != b"I":
            try:
                await asyncio.wait_for(conn.run_quietly("ROLLBACK"), 5)
            except (DatabaseError, OSError, TimeoutError, asyncio.IncompleteReadError):
                self.server.pool.release(conn, reusable=False)
                return
        self.server.pool.release(conn, reusable=conn.txn_status == b"I")


def _canonical(name: str, value: str) -> str:
    if name == "client_encoding":
        upper = value.upper().replace("-", "").replace("_", "")
        return "UTF8" if upper in ("UTF8", "UNICODE") else value.upper()
    return value
