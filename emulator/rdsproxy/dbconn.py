"""One database connection of the pool: opened, authenticated with the secret, and kept in step.

"Database connection" is RDS Proxy's own word (its logs say dbConnection); "server" is kept for the
PostgreSQL server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import ssl
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from scramp import ScramClient

from emulator.rdsproxy.auth import md5_password
from emulator.rdsproxy.memorytls import MemoryTls, TlsTransport
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend, Frontend
from emulator.rdsproxy.protocol.routing import Expect
from emulator.rdsproxy.protocol.server import IDLE, ServerState

_ids: Final = itertools.count(1)
# What ends a departed client's unsynced request without committing it (see DbConnection.settle).
_ABORT_UNSYNCED: Final = m.frame(Frontend.BIND, b"\0rdsproxy_abort\0\0\0\0\0\0\0") + m.SYNC
# A read-only endpoint's connections start with read-only transactions as their session default:
# should the replica be promoted under them, a write still fails as on a replica (25006 "cannot
# execute INSERT in a read-only transaction"). A startup option is the default RESET ALL and
# DISCARD ALL return to.
READ_ONLY_OPTIONS = "-c default_transaction_read_only=on"


@functools.cache
def _database_tls() -> ssl.SSLContext:
    """One context for every database connection: building one loads the CA store (milliseconds)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class PoolKey(NamedTuple):
    database: str
    user: str
    # RDS Proxy connects to the database with the client's own encryption setting, so TLS and
    # plain clients never share a database connection.
    tls: bool


# Every key a session borrows with, one object per value: a pool's dict then finds its own key by
# identity, without comparing the strings of two equal keys on every borrow. As few as the
# (database, user, TLS) triples that logged in.
_KEYS: Final[dict[PoolKey, PoolKey]] = {}


def pool_key(database: str, user: str, tls: bool) -> PoolKey:
    """The one PoolKey for these values."""
    key = PoolKey(database, user, tls)
    return _KEYS.setdefault(key, key)


class DatabaseError(Exception):
    """The database refused (ErrorResponse during startup or init_query): not worth retrying."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        super().__init__(fields.get("M", "database error"))

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "XX000")


# How long a connection its borrower left unfinished may take to be rolled back and brought in sync.
SETTLE_SECONDS: Final = 5.0

# How many connections in a row a borrow takes that die before use (connection_died) before it
# gives up: one is a failover's race (the next borrow waits for the new writer); more, a server
# that ends every session.
BORROW_TRIES: Final = 3


def connection_died(exc: BaseException) -> bool:
    """Whether an exchange of the proxy's own failed because its connection died (its server ended
    the session with a FATAL, or the socket closed), not for what it asked: on a connection just
    taken from the pool, nothing of a client's reached it, and another can be borrowed instead."""
    if isinstance(exc, DatabaseError):
        return _ends_session(exc.fields)
    return isinstance(exc, (OSError, asyncio.IncompleteReadError)) and not isinstance(exc, TimeoutError)


def _ends_session(error: dict[str, str]) -> bool:
    """A FATAL or PANIC (V is the severity never translated; S, before PostgreSQL 9.6, the only one)."""
    return error.get("V", error.get("S")) in ("FATAL", "PANIC")


class DatabaseUnavailable(Exception):
    """The database cannot be reached (down, restarting, refusing connections): worth retrying."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        # It answered, but it has no connection slot left (53300): it is there, only busy.
        self.full = full


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


class _BackendProtocol(asyncio.StreamReaderProtocol):
    """Stream reads for the proxy's own exchanges (startup, init_query, alignment, checks while
    pooled); while a session has the connection, every chunk goes straight to that session from the
    event loop's callback: no task per borrow, no buffer and no wake-up in between. Over TLS, the
    chunks are decrypted here first (memorytls)."""

    sink: Callable[[bytes], None] | None = None
    on_lost: Callable[[BaseException], None] | None = None
    _tls: MemoryTls | None = None
    _raw: asyncio.Transport | None = None  # the TCP transport under TLS

    def data_received(self, data: bytes) -> None:
        tls = self._tls
        if tls is not None:
            data = self._decrypt(tls, data)
            if not data:
                return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink(data)
        else:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        lost = self.on_lost if self.sink is not None else None
        keep_open = super().eof_received()
        if lost is not None:
            lost(ConnectionResetError("database connection closed"))
        # TLS has no half-close: the transport closes (as the loop's own TLS transport does).
        return keep_open and self._tls is None

    def connection_lost(self, exc: Exception | None) -> None:
        lost = self.on_lost if self.sink is not None else None
        super().connection_lost(exc)
        if self._tls is not None:
            self._tls.abandon(exc or ConnectionResetError("database connection closed during TLS"))
        if lost is not None:
            lost(exc or ConnectionResetError("database connection closed"))

    async def start_tls(
        self, transport: asyncio.Transport, context: ssl.SSLContext, hostname: str
    ) -> TlsTransport:
        """TLS as the client (after the server's "S"): the transport to write through once it is up."""
        tls = self._tls = MemoryTls(context, server_side=False, server_hostname=hostname)
        self._raw = transport
        handshake = tls.handshake
        assert handshake is not None
        transport.write(tls.start())
        await handshake
        return TlsTransport(transport, tls)

    def _decrypt(self, tls: MemoryTls, data: bytes) -> bytes:
        """The server's ciphertext: the plaintext it completes. A failed handshake fails start_tls;
        TLS broken later closes the connection (connection_lost tells its borrower)."""
        transport = self._raw
        assert transport is not None
        try:
            plain = tls.receive(data)
        except ssl.SSLError:
            self._flush(tls, transport)  # the alert
            transport.close()
            return b""
        self._flush(tls, transport)  # the handshake's next flight, or a KeyUpdate's answer
        if tls.closed:
            # The server's close_notify (after its FATAL, say): as its EOF, and the transport closes.
            if plain:
                self._deliver(plain)
            self.eof_received()
            transport.close()
            return b""
        return plain

    @staticmethod
    def _flush(tls: MemoryTls, transport: asyncio.Transport) -> None:
        outgoing = tls.outgoing()
        if outgoing and not transport.is_closing():
            transport.write(outgoing)


async def _open_stream(
    host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.Transport, _BackendProtocol]:
    """asyncio.open_connection, with the protocol that can hand data to a session directly, and the
    transport itself to write to: a StreamWriter would add a Python frame per write, and its
    __del__ closes the transport it was made for (TLS replaces that one, see start_tls)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = _BackendProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, transport, protocol


class DbConnection:
    """A PostgreSQL connection owned by the pool; borrowed by one client session at a time."""

    def __init__(
        self,
        key: PoolKey,
        reader: asyncio.StreamReader,
        writer: asyncio.Transport,
        tls: bool,
        protocol: _BackendProtocol,
    ) -> None:
        self.id = next(_ids)
        self.key = key
        self.reader = reader
        # The transport everything for the server is written to (TLS's, after an upgrade).
        self.writer = writer
        self.tls = tls
        self._protocol = protocol
        self._paused = False
        self.frames = m.FrameReader()
        self.process_id = 0
        # The server session's state as the proxy knows it (transaction status, parameters, statements).
        self.state = ServerState()
        self.created = time.monotonic()
        self.last_used = self.created
        self.broken = False
        # The clientConnection id of the session that borrowed it (0 while pooled).
        self.owner = 0
        # The target instance it is connected to (its name in target_instances, or target_name).
        self.instance = ""
        # How long its latest borrower waited for it (microseconds).
        self.waited_us = 0
        # A read-only endpoint's connection (opened with READ_ONLY_OPTIONS, to a replica).
        self.read_only = False
        # Let go while a request was in flight (its replica was promoted): closed once the request
        # is answered, never lent again (see Pool.let_go).
        self.retiring = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        key: PoolKey,
        credentials: Credentials,
        *,
        application_name: str,
        init_query: str,
        timeout: float,
        options: str = "",
    ) -> DbConnection:
        try:
            reader, writer, protocol = await asyncio.wait_for(_open_stream(host, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise DatabaseUnavailable(f"cannot connect to {host}:{port}: {exc}") from exc
        tls = False
        try:
            if key.tls:
                # For a TLS client the proxy asks the database for TLS, and uses it when offered.
                writer.write(m.ssl_request())
                answer = await asyncio.wait_for(reader.readexactly(1), timeout)
                if answer == b"S":
                    writer = await asyncio.wait_for(
                        protocol.start_tls(writer, _database_tls(), host), timeout
                    )
                    tls = True
            conn = cls(key, reader, writer, tls, protocol)
            await asyncio.wait_for(conn._startup(credentials, application_name, options), timeout)
            if init_query.strip():
                await asyncio.wait_for(conn.run_quietly(init_query), timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            writer.close()
            raise DatabaseUnavailable(f"database connection failed during startup: {exc!r}") from exc
        except BaseException:
            writer.close()
            raise
        return conn

    async def _startup(self, credentials: Credentials, application_name: str, options: str) -> None:
        params = {
            "user": credentials.user,
            "database": self.key.database,
            "application_name": application_name,
        }
        if options:
            params["options"] = options
        self.writer.write(m.startup_message(params))
        scram: ScramClient | None = None
        while True:
            frame = await self.read_frame()
            kind = frame.kind
            if kind == Backend.AUTHENTICATION:
                code = m.auth_code(frame.body)
                if code == m.AUTH_OK:
                    continue
                if code == m.AUTH_CLEARTEXT:
                    self.writer.write(m.password_message(credentials.password))
                elif code == m.AUTH_MD5:
                    salt = frame.body[4:8]
                    self.writer.write(
                        m.password_message(md5_password(credentials.user, credentials.password, salt))
                    )
                elif code == m.AUTH_SASL:
                    scram = ScramClient(["SCRAM-SHA-256"], credentials.user, credentials.password)
                    first = scram.get_client_first().encode()
                    self.writer.write(m.sasl_initial_response("SCRAM-SHA-256", first))
                elif code == m.AUTH_SASL_CONTINUE and scram is not None:
                    scram.set_server_first(frame.body[4:].decode())
                    self.writer.write(m.sasl_response(scram.get_client_final().encode()))
                elif code == m.AUTH_SASL_FINAL and scram is not None:
                    scram.set_server_final(frame.body[4:].decode())
                else:
                    raise DatabaseError({"C": "28000", "M": f"unsupported authentication request {code}"})
            elif kind == Backend.BACKEND_KEY_DATA:
                self.process_id = int.from_bytes(frame.body[:4], "big")
            elif kind == Backend.ERROR_RESPONSE:
                raise DatabaseError(m.parse_message_fields(frame.body))
            elif self._bookkeeping(frame):
                return

    async def read_frame(self) -> m.Frame:
        while True:
            for frame in self.frames.frames():
                return frame
            data = await self.reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            self.frames.feed(data)

    def _bookkeeping(self, frame: m.Frame) -> bool:
        """Remember what the server reports (parameters, transaction status); True at ReadyForQuery."""
        if frame.kind == Backend.PARAMETER_STATUS:
            self.state.reported(*m.read_parameter_status(frame.raw))
        elif frame.kind == Backend.READY_FOR_QUERY:
            self.state.txn_status = frame.body[:1]
            return True
        return False

    @property
    def txn_status(self) -> bytes:
        return self.state.txn_status

    @property
    def out_of_recovery(self) -> bool:
        """A read-only endpoint's connection whose server is no longer a hot standby: PostgreSQL 14+
        reports in_hot_standby off at the first ReadyForQuery after a promotion."""
        return self.read_only and self.state.params.get("in_hot_standby") == "off"

    async def _simple_query(self, sql: str) -> list[m.Frame]:
        """A query of the proxy's own: its answer up to ReadyForQuery; raise on error."""
        self.writer.write(m.simple_query(sql))
        answer: list[m.Frame] = []
        error: dict[str, str] | None = None
        while True:
            frame = await self.read_frame()
            if frame.kind == Backend.ERROR_RESPONSE:
                error = m.parse_message_fields(frame.body)
                if _ends_session(error):
                    break  # no ReadyForQuery follows: the server has ended the session
            elif self._bookkeeping(frame):
                break
            answer.append(frame)
        if error is not None:
            raise DatabaseError(error)
        return answer

    async def run_quietly(self, sql: str) -> None:
        """Run SQL of the proxy's own (init_query, parameter alignment); raise on error."""
        await self._simple_query(sql)

    def attach(self, sink: Callable[[bytes], None], on_lost: Callable[[BaseException], None]) -> None:
        """From now on the server's bytes go to `sink` as they arrive, and a lost connection to
        `on_lost`, until detach()."""
        self._protocol.sink = sink
        self._protocol.on_lost = on_lost

    def send(self, data: bytes) -> None:
        """A borrower's requests, as they are."""
        self.writer.write(data)

    def detach(self) -> None:
        """Back to stream reads (the proxy's own exchanges, and silence while pooled)."""
        self._protocol.sink = None
        self._protocol.on_lost = None
        self.resume_reading()

    def pause_reading(self) -> None:
        """The borrowing client reads slower than the server answers: stop reading the server."""
        transport = self.writer
        if not transport.is_closing():
            transport.pause_reading()
            self._paused = True

    @property
    def reading_paused(self) -> bool:
        return self._paused

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            transport = self.writer
            if not transport.is_closing():
                transport.resume_reading()

    def closing(self) -> bool:
        """Known to be unusable: broken, or its transport closing or closed."""
        return self.broken or self.writer.is_closing()

    def silent_since_idle(self) -> bool:
        """Nothing arrived since the last response was read, not even EOF.

        StreamReader buffers what the socket delivers even when nobody reads, but has no public way
        to ask how much: its buffer attribute is read directly, for want of a better API; with it
        empty, at_eof() is its `_eof` flag, read the same way (no Python frame on every borrow).
        """
        reader = self.reader
        if getattr(reader, "_buffer", b"") or getattr(reader, "_eof", False):
            return False
        return not self.frames.pending_bytes()

    async def fetch_rows(self, sql: str) -> list[list[str | None]]:
        """The rows of a query of the proxy's own, as text."""
        answer = await self._simple_query(sql)
        return [m.data_row_values(frame.body) for frame in answer if frame.kind == Backend.DATA_ROW]

    async def fatal_for_unknown_message(self) -> dict[str, str]:
        """What the server answers to a message type it does not know (it then ends the session):
        the fields of its FATAL, or {} when it answers otherwise."""
        self.writer.write(m.frame(ord("Y"), b""))
        with contextlib.suppress(asyncio.IncompleteReadError, OSError, m.ProtocolViolation):
            frame = await asyncio.wait_for(self.read_frame(), 5)
            if frame.kind == Backend.ERROR_RESPONSE:
                return m.parse_message_fields(frame.body)
        return {}

    async def fetch_value(self, sql: str) -> str:
        """The first column of the first row of a query of the proxy's own."""
        rows = await self.fetch_rows(sql)
        if not rows or not rows[0]:
            raise DatabaseError({"M": f"no value from {sql!r}"})
        return rows[0][0] or ""

    async def settle(self, timeout: float) -> bool:
        """Bring the server session back to a clean state after its borrower left without finishing:
        abort what it left without a Sync, roll back its transaction. True when it is fit to lend.

        Never a Sync alone: a Sync would commit the implicit transaction of the departed client's
        unsynced messages, where PostgreSQL rolls it back when a client vanishes. A Bind of a
        statement that does not exist fails (or is skipped, when the server already skips to the
        Sync) and so aborts that transaction; the Sync then ends it.
        """
        return await self._within(self._settle(), timeout)

    async def reset_session(self, *, init_query: str, unreported: Mapping[str, str], timeout: float) -> bool:
        """After a pinned session: rolled back, everything the session set on the server undone
        (DISCARD ALL: settings, prepared statements, temporary tables, advisory locks, listens,
        cursors) and the proxy's init_query run again, as on a new connection. True when it is fit
        to lend."""

        async def reset() -> None:
            await self._settle()
            await self.run_quietly("DISCARD ALL")
            state = self.state
            state.statements.clear()
            state.unnamed = None
            state.unreported = dict(unreported)
            state.aligned = None
            if init_query.strip():
                await self.run_quietly(init_query)

        return await self._within(reset(), timeout)

    async def _within(self, work: Coroutine[Any, Any, None], timeout: float) -> bool:
        try:
            await asyncio.wait_for(work, timeout)
        except (DatabaseError, OSError, TimeoutError, asyncio.IncompleteReadError, m.ProtocolViolation):
            return False
        return self.state.clean

    async def _settle(self) -> None:
        state = self.state
        router = state.router
        if router.pending():
            raise DatabaseError({"M": "a request is still being answered"})
        if router.skipping:
            # An error already aborted the implicit transaction; the server ignores all but a Sync.
            router.expect(Expect.SYNC, forward=False)
            self.writer.write(m.SYNC)
        elif router.unsynced:
            router.expect(Expect.BIND, forward=False)
            router.expect(Expect.SYNC, forward=False)
            self.writer.write(_ABORT_UNSYNCED)
        while not router.idle:
            frame = await self.read_frame()
            self._bookkeeping(frame)
            router.route(frame.kind, frame.raw)
        if state.txn_status != IDLE:
            await self.run_quietly("ROLLBACK")

    def close(self) -> None:
        self.broken = True
        if not self.writer.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self.writer.write(m.TERMINATE)
            self.writer.close()
