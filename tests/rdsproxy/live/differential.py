"""A differential harness for the wire protocol: the same scripted messages, from several clients
interleaved, sent to PostgreSQL directly (one connection per client) and through the proxy (one client
connection per client, a small shared pool behind it); every byte each client receives is compared.

A script is a few clients, each with its startup parameters, and steps: one client sends a batch of
messages in one write, or vanishes (its socket closed without a word). The runner plays the steps in
order and reads each answer until it is complete, by PostgreSQL's rules (Connection.answer), so that
it never waits on a guess. What is compared: every frame after login, with only BackendKeyData and
the process id of NotificationResponse normalised; a client's login (everything up to its first
ReadyForQuery) is not compared at all. After a script nothing may be left behind: no database
session inside a transaction, and through the proxy every pooled connection must answer a new client
as a new session would (the pool is kept from one script to the next, so what a script leaves in it
is part of what is tested; after a script that differed, the proxy is restarted, so that the next
script is judged on its own).

A failing comparison prints the script as the code that builds it, ready for the corpus.
Hypothesis strategies for scripts are at the end; test_protocol_differential.py has the fixed corpus.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import psycopg
from hypothesis import strategies as st
from scramp import ScramClient

from emulator.errors import ReadinessTimeout
from emulator.rdsproxy.auth import md5_password
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend, Frontend, kinds
from emulator.wait import wait_until

from .helpers import ProxyUnderTest, wait_quiescent

# Answers here are a few small frames from a local server, in milliseconds: seconds mean something is
# stuck (and every stuck answer costs the whole wait, so it is kept short).
DEFAULT_TIMEOUT = 5.0
# The table every script may use; emptied before each run, never recreated (RowDescription carries its
# OID, which must be the same for both runs).
TABLE = "t"

_INT16 = struct.Struct("!H")
_INT32 = struct.Struct("!I")


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


# -- what clients send: messages as data, printed as the code that builds them ---------------------


@dataclass(frozen=True)
class Query:
    sql: str
    letter = Frontend.QUERY

    def encode(self) -> bytes:
        return m.simple_query(self.sql)

    def __repr__(self) -> str:
        return f"Query({self.sql!r})"


@dataclass(frozen=True)
class Parse:
    name: str
    sql: str
    types: tuple[int, ...] = ()
    letter = Frontend.PARSE

    def encode(self) -> bytes:
        types = _INT16.pack(len(self.types)) + b"".join(_INT32.pack(oid) for oid in self.types)
        return m.parse_message(self.name, self.sql, types)

    def __repr__(self) -> str:
        types = f", {self.types!r}" if self.types else ""
        return f"Parse({self.name!r}, {self.sql!r}{types})"


@dataclass(frozen=True)
class Bind:
    portal: str = ""
    statement: str = ""
    params: tuple[str | None, ...] = ()
    letter = Frontend.BIND

    def encode(self) -> bytes:
        # No format codes: every parameter and every result column in text.
        body = _cstr(self.portal) + _cstr(self.statement) + _INT16.pack(0) + _INT16.pack(len(self.params))
        for value in self.params:
            if value is None:
                body += struct.pack("!i", -1)
            else:
                data = value.encode()
                body += _INT32.pack(len(data)) + data
        return m.frame(Frontend.BIND, body + _INT16.pack(0))

    def __repr__(self) -> str:
        return f"Bind({self.portal!r}, {self.statement!r}, {self.params!r})"


@dataclass(frozen=True)
class Describe:
    target: Literal["S", "P"]
    name: str = ""
    letter = Frontend.DESCRIBE

    def encode(self) -> bytes:
        return m.target_message(Frontend.DESCRIBE, self.target, self.name)

    def __repr__(self) -> str:
        return f"Describe({self.target!r}, {self.name!r})"


@dataclass(frozen=True)
class Execute:
    portal: str = ""
    max_rows: int = 0
    letter = Frontend.EXECUTE

    def encode(self) -> bytes:
        return m.frame(Frontend.EXECUTE, _cstr(self.portal) + _INT32.pack(self.max_rows))

    def __repr__(self) -> str:
        return f"Execute({self.portal!r}, {self.max_rows})"


@dataclass(frozen=True)
class Close:
    target: Literal["S", "P"]
    name: str = ""
    letter = Frontend.CLOSE

    def encode(self) -> bytes:
        return m.target_message(Frontend.CLOSE, self.target, self.name)

    def __repr__(self) -> str:
        return f"Close({self.target!r}, {self.name!r})"


@dataclass(frozen=True)
class Sync:
    letter = Frontend.SYNC

    def encode(self) -> bytes:
        return m.SYNC

    def __repr__(self) -> str:
        return "Sync()"


@dataclass(frozen=True)
class Flush:
    letter = Frontend.FLUSH

    def encode(self) -> bytes:
        return m.frame(Frontend.FLUSH)

    def __repr__(self) -> str:
        return "Flush()"


@dataclass(frozen=True)
class CopyData:
    data: str
    letter = Frontend.COPY_DATA

    def encode(self) -> bytes:
        return m.frame(Frontend.COPY_DATA, self.data.encode())

    def __repr__(self) -> str:
        return f"CopyData({self.data!r})"


@dataclass(frozen=True)
class CopyDone:
    letter = Frontend.COPY_DONE

    def encode(self) -> bytes:
        return m.frame(Frontend.COPY_DONE)

    def __repr__(self) -> str:
        return "CopyDone()"


@dataclass(frozen=True)
class CopyFail:
    reason: str
    letter = Frontend.COPY_FAIL

    def encode(self) -> bytes:
        return m.frame(Frontend.COPY_FAIL, _cstr(self.reason))

    def __repr__(self) -> str:
        return f"CopyFail({self.reason!r})"


@dataclass(frozen=True)
class Unknown:
    """A message type PostgreSQL does not know: it answers FATAL 08P01 and closes the connection."""

    kind: str = "Y"

    @property
    def letter(self) -> int:
        return ord(self.kind)

    def encode(self) -> bytes:
        return m.frame(ord(self.kind))

    def __repr__(self) -> str:
        return f"Unknown({self.kind!r})"


Message = (
    Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | CopyData
    | CopyDone
    | CopyFail
    | Unknown
)


@dataclass(frozen=True)
class Send:
    """One client writes these messages in one go, then reads until they are all answered."""

    client: int
    messages: tuple[Message, ...]

    def __repr__(self) -> str:
        return f"send({self.client}, {', '.join(map(repr, self.messages))})"


@dataclass(frozen=True)
class Vanish:
    """The client's socket is closed without Terminate, wherever the client was (mid-pipeline,
    mid-transaction, mid-COPY). A later Send for the same client connects it again."""

    client: int

    def __repr__(self) -> str:
        return f"Vanish({self.client})"


Step = Send | Vanish


def send(client: int, *messages: Message) -> Send:
    return Send(client, messages)


@dataclass(frozen=True)
class Client:
    """A client's startup parameters (besides user and database)."""

    params: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"client({', '.join(f'{name}={value!r}' for name, value in self.params)})"


def client(**params: str) -> Client:
    return Client(tuple(params.items()))


@dataclass(frozen=True)
class Script:
    clients: tuple[Client, ...]
    steps: tuple[Step, ...]

    def __repr__(self) -> str:
        clients = ", ".join(map(repr, self.clients)) + ("," if len(self.clients) == 1 else "")
        lines = ["Script(", f"    clients=({clients}),", "    steps=("]
        lines += [f"        {step!r},  # {index}" for index, step in enumerate(self.steps)]
        return "\n".join([*lines, "    ),", ")"])


def script(clients: Sequence[Client], *steps: Step) -> Script:
    return Script(tuple(clients), steps)


# -- what clients receive ----------------------------------------------------------------------

# How a step's answer ended, besides completely.
CLOSED = "closed by the server"
TIMEOUT = "TIMEOUT (no complete answer)"
VANISHED = "vanished"
LINGERS = "vanished, but the server still had the session after the timeout"


@dataclass(frozen=True)
class Outcome:
    """What one client received in one step, normalised."""

    frames: tuple[bytes, ...] = ()
    # "" when the answer was complete; else CLOSED, TIMEOUT, VANISHED or LINGERS.
    end: str = ""
    # The client had been closed and was connected again (a fresh login) for this step.
    reconnected: bool = False


@dataclass(frozen=True)
class Transcript:
    outcomes: tuple[Outcome, ...]
    # What a script left behind after every client closed (sessions still in a transaction, ...).
    leftovers: tuple[str, ...] = ()

    @property
    def timed_out(self) -> bool:
        return any(outcome.end == TIMEOUT for outcome in self.outcomes)


def normalise(raw: bytes) -> bytes:
    """Only what must differ between two servers: process ids and cancellation keys."""
    kind = raw[0]
    if kind == Backend.BACKEND_KEY_DATA:
        return raw[:5] + bytes(len(raw) - 5)
    if kind == Backend.NOTIFICATION_RESPONSE:
        return raw[:5] + bytes(4) + raw[9:]
    return raw


# -- one client connection and its reader ---------------------------------------------------------


class Closed(Exception):
    """The server ended the connection."""


_EXTENDED = frozenset({Frontend.PARSE, Frontend.BIND, Frontend.DESCRIBE, Frontend.EXECUTE, Frontend.CLOSE})
_KNOWN = frozenset(kinds(Frontend).values()) - {Frontend.PASSWORD}
_ERROR = Backend.ERROR_RESPONSE
# What completes the answer to each extended-protocol message (an ErrorResponse completes any of them).
_COMPLETES: dict[int, frozenset[int]] = {
    Frontend.PARSE: frozenset({Backend.PARSE_COMPLETE, _ERROR}),
    Frontend.BIND: frozenset({Backend.BIND_COMPLETE, _ERROR}),
    Frontend.DESCRIBE: frozenset({Backend.ROW_DESCRIPTION, Backend.NO_DATA, _ERROR}),
    Frontend.EXECUTE: frozenset(
        {
            Backend.COMMAND_COMPLETE,
            Backend.EMPTY_QUERY_RESPONSE,
            Backend.PORTAL_SUSPENDED,
            Backend.COPY_IN_RESPONSE,
            _ERROR,
        }
    ),
    Frontend.CLOSE: frozenset({Backend.CLOSE_COMPLETE, _ERROR}),
}
_READY = frozenset({Backend.READY_FOR_QUERY})


def _fatal(raw: bytes) -> bool:
    fields = m.parse_message_fields(raw[5:])
    return fields.get("V", fields.get("S")) in ("FATAL", "PANIC")


class Connection:
    """A logged-in client connection, with the reader's model of its server session.

    The model is the part of PostgreSQL's main loop (postgres.c, PostgresMain and SocketBackend) that
    decides what a message is answered with: after an ErrorResponse to an extended-protocol message
    everything up to Sync is skipped, including Query; an error in a Query or at Sync starts no
    skipping; during COPY FROM STDIN CopyData is consumed silently and Flush and Sync are ignored.
    """

    def __init__(self, sock: socket.socket, identity: Any) -> None:
        self.sock = sock
        # What the target knows this session by (a backend pid, or the proxy's name for the peer).
        self.identity = identity
        self.frames = m.FrameReader()
        self.closed = False
        self.skipping = False
        # Inside COPY FROM STDIN: "simple" (started by a Query) or "extended" (by an Execute).
        self.copy: Literal["simple", "extended"] | None = None

    def next_frame(self, deadline: float) -> bytes:
        """The next frame as it came (not normalised), waiting until the deadline."""
        while True:
            for frame in self.frames.frames():
                return frame.raw
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise Closed from exc
            if not data:
                raise Closed
            self.frames.feed(data)

    def read_until(self, ends: frozenset[int], received: list[bytes], deadline: float) -> int:
        """Frames up to the first of kind `ends`; a FATAL error means the server is closing."""
        while True:
            raw = self.next_frame(deadline)
            received.append(normalise(raw))
            if raw[0] == _ERROR and _fatal(raw):
                self.read_to_the_end(received, deadline)
            if raw[0] in ends:
                return raw[0]

    def read_to_the_end(self, received: list[bytes], deadline: float) -> None:
        while True:
            received.append(normalise(self.next_frame(deadline)))

    def already_there(self, received: list[bytes]) -> None:
        """Whatever has arrived beyond the answer (nothing, when server and model agree)."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    raise Closed
                self.frames.feed(data)
        except (BlockingIOError, InterruptedError):
            pass
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise Closed from exc
        finally:
            self.sock.setblocking(True)
        for frame in self.frames.frames():
            received.append(normalise(frame.raw))

    def answer(self, message: Message, received: list[bytes], deadline: float) -> None:
        """Read what the server answers `message` with (nothing, for many), as PostgreSQL would."""
        letter = message.letter
        if self.copy is not None:
            if letter in (Frontend.COPY_DATA, Frontend.FLUSH, Frontend.SYNC):
                return
            mode, self.copy = self.copy, None
            if mode == "simple":
                # CopyDone: CommandComplete; CopyFail: ERROR; anything else: ERROR, then FATAL (the
                # message's body is left unread, so the server has lost the message boundaries).
                self.read_until(_READY, received, deadline)
            elif self.read_until(frozenset({Backend.COMMAND_COMPLETE, _ERROR}), received, deadline) == _ERROR:
                self.skipping = True
            return
        if letter not in _KNOWN:
            self.read_until(frozenset(), received, deadline)  # FATAL, even while skipping
            return
        if self.skipping:
            if letter == Frontend.SYNC:
                self.skipping = False
                self.read_until(_READY, received, deadline)
            return
        if letter == Frontend.QUERY:
            if (
                self.read_until(_READY | {Backend.COPY_IN_RESPONSE}, received, deadline)
                != Backend.READY_FOR_QUERY
            ):
                self.copy = "simple"
        elif letter == Frontend.SYNC:
            self.read_until(_READY, received, deadline)
        elif letter in _EXTENDED:
            end = self.read_until(_COMPLETES[letter], received, deadline)
            if end == _ERROR:
                self.skipping = True
            elif end == Backend.COPY_IN_RESPONSE:
                self.copy = "extended"
        # Flush, and CopyData/CopyDone/CopyFail outside COPY (ignored by the server), get no answer.

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise Closed from exc

    def terminate(self) -> None:
        with suppress(OSError):
            self.sock.sendall(m.TERMINATE)
        self.vanish()

    def vanish(self) -> None:
        self.closed = True
        self.sock.close()


def _login(sock: socket.socket, user: str, password: str, database: str, params: dict[str, str]) -> int:
    """Startup and authentication (SCRAM-SHA-256 or MD5) up to the first ReadyForQuery: the process id
    the server gave (BackendKeyData)."""
    conn = Connection(sock, None)
    sock.sendall(m.startup_message({"user": user, "database": database, **params}))
    scram: ScramClient | None = None
    pid = 0
    deadline = time.monotonic() + DEFAULT_TIMEOUT
    while True:
        raw = conn.next_frame(deadline)
        kind = raw[0]
        if kind == _ERROR:
            raise RuntimeError(f"login refused: {m.parse_message_fields(raw[5:])}")
        if kind == Backend.BACKEND_KEY_DATA:
            pid = _INT32.unpack_from(raw, 5)[0]
        if kind == Backend.READY_FOR_QUERY:
            # Nothing may follow the login's ReadyForQuery unasked.
            assert not conn.frames.pending_bytes()
            return pid
        if kind != Backend.AUTHENTICATION:
            continue
        code = m.auth_code(raw[5:])
        if code == m.AUTH_MD5:
            sock.sendall(m.password_message(md5_password(user, password, raw[9:13])))
        elif code == m.AUTH_SASL:
            scram = ScramClient(["SCRAM-SHA-256"], user, password)
            sock.sendall(m.sasl_initial_response("SCRAM-SHA-256", scram.get_client_first().encode()))
        elif code == m.AUTH_SASL_CONTINUE and scram is not None:
            scram.set_server_first(raw[9:].decode())
            sock.sendall(m.sasl_response(scram.get_client_final().encode()))
        elif code == m.AUTH_SASL_FINAL and scram is not None:
            scram.set_server_final(raw[9:].decode())
        elif code != m.AUTH_OK:
            raise RuntimeError(f"unsupported authentication request {code}")


# -- where scripts run -----------------------------------------------------------------------


class Database:
    """The database both targets share, seen through a superuser connection of the harness's own."""

    def __init__(self, admin: psycopg.Connection[Any], user: str) -> None:
        self.admin = admin
        self.user = user
        admin.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int, note text)")
        admin.execute(f"ALTER TABLE {TABLE} OWNER TO {user}")

    def reset(self) -> None:
        """The same state before every run: an empty table (same OID, so RowDescription is equal)."""
        self.admin.execute("SET lock_timeout = '10s'")
        self.admin.execute(f"TRUNCATE {TABLE}")

    def has_backend(self, pid: int) -> bool:
        row = self.admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        return bool(row and row[0])

    def busy_backends(self) -> list[tuple[int, str, str]]:
        """The user's sessions that are not idle: (pid, state, last query)."""
        rows = self.admin.execute(
            "SELECT pid, state, query FROM pg_stat_activity WHERE usename = %s"
            " AND backend_type = 'client backend' AND state IS DISTINCT FROM 'idle'",
            (self.user,),
        ).fetchall()
        return [(int(pid), str(state), str(query)) for pid, state, query in rows]

    def terminate(self, pids: Sequence[int]) -> None:
        for pid in pids:
            self.admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def left_in_a_transaction(self, timeout: float) -> tuple[str, ...]:
        """Sessions still busy after `timeout` (a closed connection's backend takes a moment to exit):
        described, then terminated so that the next run starts clean."""
        found: list[tuple[int, str, str]] = []

        def none_busy() -> bool:
            found[:] = self.busy_backends()
            return not found

        with suppress(ReadinessTimeout):
            wait_until(none_busy, component="database sessions (idle)", timeout=timeout)
        if not found:
            return ()
        self.terminate([pid for pid, _, _ in found])
        return tuple(f"a database session was left {state!r} after {query!r}" for _, state, query in found)


class Target(Protocol):
    name: str

    def connect(self, client: Client) -> Connection: ...

    def gone(self, conn: Connection, timeout: float) -> bool:
        """Wait until the server has dropped this client's session; False if it has not by then."""
        ...

    def settle(self, timeout: float) -> tuple[str, ...]:
        """After every client closed: what the script left behind, described (and cleaned up)."""
        ...

    def fresh(self) -> None:
        """Start over, so that the next script does not inherit this one's damage."""
        ...


@dataclass
class Direct:
    """PostgreSQL itself: one connection per client."""

    host: str
    port: int
    user: str
    password: str
    database: str
    db: Database
    name: str = "PostgreSQL"

    def connect(self, client: Client) -> Connection:
        sock = socket.create_connection((self.host, self.port), timeout=DEFAULT_TIMEOUT)
        return Connection(sock, _login(sock, self.user, self.password, self.database, dict(client.params)))

    def gone(self, conn: Connection, timeout: float) -> bool:
        try:
            wait_until(lambda: not self.db.has_backend(conn.identity), component="a backend", timeout=timeout)
        except ReadinessTimeout:
            return False
        return True

    def settle(self, timeout: float) -> tuple[str, ...]:
        return self.db.left_in_a_transaction(timeout)

    def fresh(self) -> None:
        """Every client's session ended with its connection: nothing to start over."""


@dataclass
class Proxied:
    """The proxy: one client connection per client, its pool kept from one script to the next."""

    proxy: ProxyUnderTest
    db: Database
    name: str = "proxy"

    def connect(self, client: Client) -> Connection:
        proxy = self.proxy
        sock = socket.create_connection((proxy.host, proxy.port), timeout=DEFAULT_TIMEOUT)
        _login(sock, proxy.user, proxy.password(), proxy.database, dict(client.params))
        host, port = sock.getsockname()[:2]
        return Connection(sock, f"{host}:{port}")

    def gone(self, conn: Connection, timeout: float) -> bool:
        emulator = self.proxy.emulator

        def ended() -> bool:
            return all(session["peer"] != conn.identity for session in emulator.sessions())

        try:
            wait_until(ended, component="a proxy session", timeout=timeout)
        except ReadinessTimeout:
            return False
        return True

    def settle(self, timeout: float) -> tuple[str, ...]:
        try:
            wait_quiescent(self.proxy.emulator, timeout=timeout)
        except AssertionError as exc:
            return (str(exc),)
        return self.db.left_in_a_transaction(timeout) or self._probe_pool(timeout)

    def _probe_pool(self, timeout: float) -> tuple[str, ...]:
        """Every pooled connection must answer the next client as a new session would. A connection can
        look idle to pg_stat_activity and still be skipping to a Sync (a Bind of a missing statement
        fails before the server reports any activity), so each one is asked: as many clients as the pool
        has room for each hold one, inside a transaction, and ask it something."""
        probes: list[Connection] = []
        problems: list[str] = []
        try:
            for _ in range(self.proxy.stats()["pool"]["cap"]):
                probe = self.connect(Client())
                probes.append(probe)
                received: list[bytes] = []
                end: list[str] = []
                deadline = time.monotonic() + timeout
                try:
                    probe.send(b"".join(query.encode() for query in _PROBE))
                    for query in _PROBE:
                        probe.answer(query, received, deadline)
                except Closed:
                    end = [CLOSED]
                    probe.vanish()
                except TimeoutError:
                    end = [TIMEOUT]
                answer = [describe(raw) for raw in received] + end
                if answer != _PROBE_ANSWER:
                    problems.append(f"a pooled database connection answered {_PROBE} with {answer}")
        finally:
            for probe in probes:
                if not probe.closed:
                    probe.terminate()
                self.gone(probe, timeout)
        return tuple(problems)

    def fresh(self) -> None:
        """A restarted proxy: an empty pool (what a script left in it would fail the scripts after it)."""
        self.proxy.emulator.stop()
        self.proxy.emulator.start()


_PROBE = (Query("begin"), Query("select 1"))
_PROBE_ANSWER = [
    "C command_complete: BEGIN",
    "Z ready_for_query: T",
    "T row_description: ?column?:23",
    "D data_row: '1'",
    "C command_complete: SELECT 1",
    "Z ready_for_query: T",
]


# -- the runner --------------------------------------------------------------------------------


@dataclass
class Runner:
    db: Database
    timeout: float = DEFAULT_TIMEOUT

    def run(self, plan: Script, target: Target, reference: Transcript | None = None) -> Transcript:
        """Play the script; with a reference, stop at the first step that differs from it."""
        self.db.reset()
        conns = {index: target.connect(c) for index, c in enumerate(plan.clients)}
        outcomes: list[Outcome] = []
        differed = False
        try:
            for index, step in enumerate(plan.steps):
                outcome = self._step(plan, step, target, conns)
                outcomes.append(outcome)
                if reference is not None and reference.outcomes[index : index + 1] != (outcome,):
                    differed = True
                    break
        finally:
            for conn in conns.values():
                if not conn.closed:
                    conn.terminate()
                    target.gone(conn, self.timeout)
        leftovers = target.settle(self.timeout)
        if differed or leftovers:
            target.fresh()
        return Transcript(tuple(outcomes), leftovers)

    def _step(self, plan: Script, step: Step, target: Target, conns: dict[int, Connection]) -> Outcome:
        conn = conns[step.client]
        if isinstance(step, Vanish):
            if conn.closed:
                return Outcome(end=VANISHED)
            conn.vanish()
            return Outcome(end=VANISHED if target.gone(conn, self.timeout) else LINGERS)
        reconnected = conn.closed
        if reconnected:
            conn = conns[step.client] = target.connect(plan.clients[step.client])
        received: list[bytes] = []
        end = ""
        deadline = time.monotonic() + self.timeout
        try:
            conn.send(b"".join(message.encode() for message in step.messages))
            for message in step.messages:
                conn.answer(message, received, deadline)
            conn.already_there(received)
        except Closed:
            end = CLOSED
            conn.vanish()
        except TimeoutError:
            end = TIMEOUT
            conn.vanish()
            target.gone(conn, self.timeout)
        return Outcome(tuple(received), end, reconnected)


# -- comparing and reporting -------------------------------------------------------------------

_NAMES = {value: name for name, value in kinds(Backend).items()}


def describe(raw: bytes) -> str:
    """One frame, short: its letter, its name, and what its body says."""
    kind, body = raw[0], raw[5:]
    head = f"{chr(kind)} {_NAMES.get(kind, 'unknown').lower()}"
    try:
        detail = _detail(kind, body)
    except (struct.error, m.ProtocolViolation, IndexError):
        detail = repr(body[:60])
    return f"{head}: {detail}" if detail else head


def _detail(kind: int, body: bytes) -> str:
    if kind in (Backend.ERROR_RESPONSE, Backend.NOTICE_RESPONSE):
        fields = m.parse_message_fields(body)
        main = f"{fields.pop('S', '')} {fields.pop('C', '')} {fields.pop('M', '')}"
        fields.pop("V", None)
        return main + "".join(f" {code}={value!r}" for code, value in fields.items())
    if kind == Backend.COMMAND_COMPLETE:
        return m.read_cstring(body)[0]
    if kind == Backend.READY_FOR_QUERY:
        return body.decode()
    if kind == Backend.DATA_ROW:
        values, offset = [], 2
        for _ in range(_INT16.unpack_from(body)[0]):
            (length,) = struct.unpack_from("!i", body, offset)
            offset += 4
            values.append("NULL" if length < 0 else repr(body[offset : offset + length].decode()))
            offset += max(length, 0)
        return " ".join(values)
    if kind == Backend.ROW_DESCRIPTION:
        columns, offset = [], 2
        for _ in range(_INT16.unpack_from(body)[0]):
            name, offset = m.read_cstring(body, offset)
            type_oid = _INT32.unpack_from(body, offset + 6)[0]
            columns.append(f"{name}:{type_oid}")
            offset += 18
        return " ".join(columns)
    if kind == Backend.PARAMETER_DESCRIPTION:
        count = _INT16.unpack_from(body)[0]
        return " ".join(str(_INT32.unpack_from(body, 2 + 4 * i)[0]) for i in range(count))
    if kind == Backend.PARAMETER_STATUS:
        name, offset = m.read_cstring(body)
        return f"{name}={m.read_cstring(body, offset)[0]}"
    if kind in (Backend.PARSE_COMPLETE, Backend.BIND_COMPLETE, Backend.CLOSE_COMPLETE, Backend.NO_DATA):
        return ""
    if kind in (Backend.EMPTY_QUERY_RESPONSE, Backend.PORTAL_SUSPENDED, Backend.COPY_DONE):
        return ""
    return repr(body[:60])


def render(outcome: Outcome, indent: str = "    ") -> str:
    lines = [indent + "(connected again)"] if outcome.reconnected else []
    lines += [indent + describe(raw) for raw in outcome.frames]
    if outcome.end:
        lines.append(indent + f"[{outcome.end}]")
    return "\n".join(lines) if lines else indent + "(nothing)"


def difference(
    plan: Script, expected: Transcript, actual: Transcript, *, names: tuple[str, str]
) -> str | None:
    """None when both transcripts agree; else a report: the script, the first differing step, both sides."""
    first, second = names
    for index, step in enumerate(plan.steps):
        mine = expected.outcomes[index] if index < len(expected.outcomes) else None
        theirs = actual.outcomes[index] if index < len(actual.outcomes) else None
        if mine == theirs:
            continue
        same = "\n".join(
            f"  step {i} {plan.steps[i]!r}\n{render(expected.outcomes[i])}" for i in range(index)
        )
        return (
            f"{second} differs from {first} at step {index}: {step!r}\n\n{plan!r}\n\n"
            f"{first} answered:\n{render(mine) if mine else '    (step not run)'}\n"
            f"{second} answered:\n{render(theirs) if theirs else '    (step not run)'}\n\n"
            f"Steps before it (the same on both):\n{same or '  (none)'}"
        )
    if expected.leftovers != actual.leftovers:
        return (
            f"After the script, {second} left {list(actual.leftovers)} where {first} left "
            f"{list(expected.leftovers)}\n\n{plan!r}"
        )
    return None


@dataclass
class Harness:
    """Runs a script on PostgreSQL, then through the proxy, and says where they differ."""

    runner: Runner
    direct: Direct
    proxied: Proxied

    def __repr__(self) -> str:
        # Hypothesis prints the test's arguments with a failing example: the script is what matters.
        direct, proxy = self.direct, self.proxied.proxy
        return f"Harness(PostgreSQL at {direct.host}:{direct.port}, proxy at {proxy.host}:{proxy.port})"

    def transcript(self, plan: Script, target: Target, reference: Transcript | None = None) -> Transcript:
        return self.runner.run(plan, target, reference)

    def differences(self, plan: Script) -> str | None:
        expected = self.transcript(plan, self.direct)
        if expected.timed_out:
            raise AssertionError(
                "the harness's model of PostgreSQL is wrong: it waited for an answer PostgreSQL never "
                f"gave\n\n{plan!r}\n\n"
                + "\n".join(f"  step {i}\n{render(o)}" for i, o in enumerate(expected.outcomes))
            )
        actual = self.transcript(plan, self.proxied, reference=expected)
        return difference(plan, expected, actual, names=(self.direct.name, self.proxied.name))

    def assert_same(self, plan: Script) -> None:
        report = self.differences(plan)
        if report is not None:
            raise AssertionError(report)


@contextmanager
def harness(proxy: ProxyUnderTest, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Harness]:
    """A harness on the stack's PostgreSQL and this proxy (which must let plain password logins in)."""
    stack = proxy.stack
    with stack.postgres.admin_connection(dbname=stack.config.database) as admin:
        db = Database(admin, stack.config.db_user)
        direct = Direct(
            stack.postgres.host,
            stack.postgres.port,
            stack.config.db_user,
            stack.db_password,
            stack.config.database,
            db,
        )
        yield Harness(Runner(db, timeout), direct, Proxied(proxy, db))


# -- generated scripts (Hypothesis) --------------------------------------------------------------

STARTUP_CHOICES: dict[str, tuple[str, ...]] = {
    "application_name": ("app_one", "app_two"),
    "extra_float_digits": ("0", "3"),
    "TimeZone": ("Asia/Tokyo", "UTC"),
    "DateStyle": ("SQL, DMY", "German"),
}
QUERIES = (
    "select 1",
    f"select id, note from {TABLE} order by id, note",
    f"insert into {TABLE} values (1, 'q')",
    "begin",
    "commit",
    "rollback",
    "select 1/0",
    "selec 1",
    "",
    "select 1; select 2",
    "prepare s as select 1",
    "execute s",
    "deallocate s",
    "deallocate all",
    "deallocate a",
    "execute a",
    "discard all",
    "set extra_float_digits = 2",
    "select 1.0::float8/3",
    "show application_name",
    "select '2024-01-02 03:04:05+00'::timestamptz",
    f"copy {TABLE} from stdin",
)
# (SQL, how many parameters it takes)
PARSED = (
    ("select 1", 0),
    ("select $1::int", 1),
    (f"insert into {TABLE} values ($1::int, 'p')", 1),
    (f"select id, note from {TABLE} order by id, note", 0),
    ("select 1/0", 0),  # fails at Execute
    ("selec 1", 0),  # fails at Parse
    ("select * from missing_table", 0),  # fails at Parse (analysis)
    ("begin", 0),
    ("commit", 0),
    ("select 1.0::float8/3", 0),
    ("", 0),
    ("deallocate all", 0),
)
STATEMENTS = ("", "a", "b")
PORTALS = ("", "p")
PARAMS: tuple[tuple[str | None, ...], ...] = ((), ("1",), ("x",), (None,))
COPY_ROW = "5\tcopied\n"


@st.composite
def clients(draw: st.DrawFn) -> Client:
    names = draw(st.lists(st.sampled_from(sorted(STARTUP_CHOICES)), unique=True, max_size=2))
    return Client(tuple((name, draw(st.sampled_from(STARTUP_CHOICES[name]))) for name in names))


@st.composite
def parses(draw: st.DrawFn) -> Parse:
    sql, count = draw(st.sampled_from(PARSED))
    types = draw(st.sampled_from([(), (23,)])) if count else ()
    return Parse(draw(st.sampled_from(STATEMENTS)), sql, types)


@st.composite
def runs(draw: st.DrawFn) -> list[Message]:
    """Parse (or a statement parsed before), Bind with fitting parameters, maybe Describe, Execute."""
    name = draw(st.sampled_from(STATEMENTS))
    portal = draw(st.sampled_from(PORTALS))
    sql, count = draw(st.sampled_from(PARSED))
    out: list[Message] = []
    if draw(st.booleans()):
        out.append(Parse(name, sql, draw(st.sampled_from([(), (23,)])) if count else ()))
    out.append(Bind(portal, name, ("2",) * count))
    if draw(st.booleans()):
        out.append(Describe("P", portal))
    out.append(Execute(portal, draw(st.sampled_from([0, 1]))))
    return out


def _single(message: st.SearchStrategy[Message]) -> st.SearchStrategy[list[Message]]:
    return message.map(lambda item: [item])


_queries: st.SearchStrategy[Message] = st.sampled_from(QUERIES).map(Query)
_extended_items: st.SearchStrategy[list[Message]] = st.one_of(
    runs(),
    runs(),
    runs(),
    runs(),
    _single(parses()),
    _single(st.builds(Bind, st.sampled_from(PORTALS), st.sampled_from(STATEMENTS), st.sampled_from(PARAMS))),
    _single(st.builds(Describe, st.just("S"), st.sampled_from(STATEMENTS))),
    _single(st.builds(Describe, st.just("P"), st.sampled_from(PORTALS))),
    _single(st.builds(Execute, st.sampled_from(PORTALS), st.sampled_from([0, 1]))),
    _single(st.builds(Close, st.just("S"), st.sampled_from(STATEMENTS))),
    _single(st.builds(Close, st.just("P"), st.sampled_from(PORTALS))),
    _single(st.just(Sync())),
    _single(st.just(Flush())),
    _single(_queries),
)


@st.composite
def batches(draw: st.DrawFn) -> tuple[Message, ...]:
    """One write: simple queries; extended messages ending with Sync, Flush or a Query; a COPY; or a
    message type PostgreSQL does not know."""
    kind = draw(st.sampled_from(["simple"] * 3 + ["extended"] * 6 + ["copy", "copy more", "unknown"]))
    if kind == "simple":
        return tuple(draw(st.lists(_queries, min_size=1, max_size=2)))
    if kind == "extended":
        items = draw(st.lists(_extended_items, min_size=1, max_size=4))
        last: Message = draw(st.one_of(st.just(Sync()), st.just(Flush()), _queries))
        return (*(message for item in items for message in item), last)
    if kind == "unknown":
        return (Unknown(),)
    start: tuple[Message, ...] = (Query(f"copy {TABLE} from stdin"),) if kind == "copy" else ()
    rows = draw(st.integers(min_value=0 if start else 1, max_value=2))
    # Ending with CopyData leaves the COPY open: a later step goes on with it, or the client vanishes.
    end: tuple[Message, ...] = draw(st.sampled_from([(CopyDone(),), (CopyFail("stop"),), ()]))
    return (*start, *(CopyData(COPY_ROW),) * rows, *end)


@st.composite
def scripts(draw: st.DrawFn, max_clients: int = 3, max_steps: int = 10) -> Script:
    count = draw(st.integers(min_value=1, max_value=max_clients))
    who = st.integers(min_value=0, max_value=count - 1)
    steps = draw(
        st.lists(
            st.one_of(
                st.builds(Send, who, batches()),
                st.builds(Send, who, batches()),
                st.builds(Send, who, batches()),
                st.builds(Vanish, who),
            ),
            min_size=1,
            max_size=max_steps,
        )
    )
    return Script(tuple(draw(clients()) for _ in range(count)), tuple(steps))
