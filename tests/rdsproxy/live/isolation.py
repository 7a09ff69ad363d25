"""An isolation harness for the proxy: many clients sharing a small pool, each one checking after every
step that it sees only its own state, while some of them vanish in the states a pooler finds hardest
to clean up after (mid-pipeline, mid-transaction, mid-COPY, in error state).

Every client has an identity of its own: startup parameters (application_name, TimeZone,
extra_float_digits), rows in `iso_rows` tagged with its name, and prepared statements whose names it
shares with every other client but whose text, and so whose answers, are its own. Most clients speak
the protocol byte by byte (a driver cannot stop mid-pipeline or mid-COPY); some are psycopg 3 and
asyncpg connections, whose statement caches use the same statement names in every connection.

A ledger records every transaction's fate as its client knows it (a COMMIT is recorded as sent before
it is written, so that no other client can see its rows earlier), and an oracle with its own direct
connection to PostgreSQL checks that no row of a rolled-back or vanished transaction is ever committed,
that the proxy never lent a connection out of sync (`lent_out_of_sync` in /stats), and that the proxy is
quiescent once every client is gone.

Each client's choices come from a random generator seeded with the run's seed and the client's number;
the interleaving of clients is up to the event loop, so a seed fixes what every client does, not
exactly when.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg

from emulator.rdsproxy.auth import md5_password
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend, Frontend

TABLE = "iso_rows"
TABLE_DDL = (
    f"CREATE TABLE {TABLE} (client text NOT NULL, txn text NOT NULL, seq int NOT NULL, "
    "PRIMARY KEY (txn, seq))"
)
TIMEZONES = (
    "Asia/Tokyo",
    "Europe/Paris",
    "America/New_York",
    "Australia/Sydney",
    "Africa/Cairo",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Pacific/Auckland",
    "Europe/Helsinki",
    "America/Anchorage",
)
# extra_float_digits 1..3 all print the shortest exact form: -3..1 print 1/3 five different ways.
FLOAT_DIGITS = (-3, -2, -1, 0, 1)
# Custom setting a pinned client SETs (any dotted name is a valid placeholder in PostgreSQL).
OWNER_SETTING = "iso.owner"
FLUSH = m.frame(Frontend.FLUSH)
COPY_DONE = m.frame(Frontend.COPY_DONE)


def one_third(extra_float_digits: int) -> str:
    """How PostgreSQL prints 1.0::float8/3 with this extra_float_digits."""
    if extra_float_digits >= 1:
        return repr(1 / 3)
    return f"{1 / 3:.{15 + extra_float_digits}g}"


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


# Kinds of violation, for the summary.
WRONG_ANSWER = "wrong answer"
FOREIGN_STATE = "another session's state seen"
UNFINISHED_ROWS = "rows of an unfinished transaction seen"
OWN_ROWS = "own rows wrong"
HANG = "no answer (hang)"
COMMITTED = "unfinished work committed"
LENT_OUT_OF_SYNC = "lent out of sync"
NOT_QUIESCENT = "not quiescent"
CRASH = "traceback in the proxy's log"
BORROW_TIMEOUT = "borrow timeout"
HARNESS = "harness error"


class Violation(Exception):
    """What a client saw that it must not have (or did not see that it must)."""

    def __init__(self, text: str, kind: str = WRONG_ANSWER) -> None:
        super().__init__(text)
        self.kind = kind


# -- the protocol, byte by byte ------------------------------------------------------------------


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def parse(name: str, query: str) -> bytes:
    return m.parse_message(name, query, struct.pack("!H", 0))


def bind(statement: str, params: list[str], portal: str = "") -> bytes:
    values = b"".join(struct.pack("!i", len(p.encode())) + p.encode() for p in params)
    # No parameter format codes (all text), the values, no result format codes (all text).
    header = _cstr(portal) + _cstr(statement) + struct.pack("!HH", 0, len(params))
    return m.frame(Frontend.BIND, header + values + struct.pack("!H", 0))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return m.frame(Frontend.EXECUTE, _cstr(portal) + struct.pack("!I", max_rows))


def describe(target: str, name: str = "") -> bytes:
    return m.target_message(Frontend.DESCRIBE, target, name)


def close(target: str, name: str) -> bytes:
    return m.target_message(Frontend.CLOSE, target, name)


def copy_data(text: str) -> bytes:
    return m.frame(Frontend.COPY_DATA, text.encode())


def data_row(body: bytes) -> tuple[str | None, ...]:
    (count,) = struct.unpack_from("!H", body, 0)
    offset = 2
    values: list[str | None] = []
    for _ in range(count):
        (length,) = struct.unpack_from("!i", body, offset)
        offset += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[offset : offset + length].decode())
            offset += length
    return tuple(values)


@dataclass
class Answer:
    """The server's messages for one request, up to and including ReadyForQuery."""

    frames: list[m.Frame]

    @property
    def kinds(self) -> str:
        return "".join(chr(f.kind) for f in self.frames)

    @property
    def rows(self) -> list[tuple[str | None, ...]]:
        return [data_row(f.body) for f in self.frames if f.kind == Backend.DATA_ROW]

    @property
    def errors(self) -> list[dict[str, str]]:
        return [m.parse_message_fields(f.body) for f in self.frames if f.kind == Backend.ERROR_RESPONSE]

    @property
    def notices(self) -> list[dict[str, str]]:
        return [m.parse_message_fields(f.body) for f in self.frames if f.kind == Backend.NOTICE_RESPONSE]

    @property
    def status(self) -> str:
        last = self.frames[-1]
        return last.body.decode() if last.kind == Backend.READY_FOR_QUERY else "?"

    def value(self) -> str | None:
        rows = self.rows
        if len(rows) != 1 or len(rows[0]) != 1:
            raise Violation(f"expected one value, got {rows}")
        return rows[0][0]


class Wire:
    """One raw client connection on asyncio streams; reads end at the proxy's EOF or at abandon()."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = m.FrameReader()
        # The last FATAL the proxy sent: why it then closed the connection.
        self.fatal = ""

    @classmethod
    async def open(cls, host: str, port: int) -> Wire:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self) -> m.Frame:
        while True:
            for frame in self.frames.frames():
                if frame.kind == Backend.ERROR_RESPONSE:
                    fields = m.parse_message_fields(frame.body)
                    if fields.get("S") == "FATAL":
                        self.fatal = f"FATAL {fields.get('C')} {fields.get('M')}"
                return frame
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionResetError(f"the proxy closed the connection {self.fatal}".strip())
            self.frames.feed(data)

    async def until(self, kind: int) -> list[m.Frame]:
        frames = []
        while True:
            frame = await self.frame()
            frames.append(frame)
            if frame.kind == kind:
                return frames

    async def vanish(self, *, reset: bool) -> None:
        """Gone without a Terminate: after what was written has left (a FIN), or at once (a RST)."""
        # Bounded: a proxy that stopped reading this connection must not hold the client here.
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.drain(), 2)
        sock = self.writer.get_extra_info("socket")
        if reset and sock is not None:
            # SO_LINGER 0: close() sends RST, as a crashed host's kernel (or a killed container) would.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abandon()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()

    def abandon(self) -> None:
        self.writer.transport.abort()

    async def terminate(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            self.writer.write(m.TERMINATE)
            await self.writer.drain()
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


# -- who is who, and what happened to every transaction ---------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """The proxy under test, as clients reach it (MD5 password, no TLS) and as the oracle reads it."""

    host: str
    port: int
    user: str
    password: str
    database: str
    # PostgreSQL directly, as its superuser: the oracle's view.
    admin_conninfo: str
    stats: Callable[[], dict[str, Any]]
    # Raises AssertionError unless the proxy is quiescent (helpers.wait_quiescent).
    wait_quiescent: Callable[[], object]
    # The proxy's log so far.
    log: Callable[[], str]


@dataclass(frozen=True)
class Identity:
    number: int
    kind: str
    timezone: str | None
    extra_float_digits: int | None

    @property
    def tag(self) -> str:
        return f"c{self.number:04d}"

    @property
    def application_name(self) -> str:
        return f"iso-{self.tag}"

    def startup(self) -> dict[str, str]:
        params = {"application_name": self.application_name}
        if self.timezone is not None:
            params["TimeZone"] = self.timezone
        if self.extra_float_digits is not None:
            params["extra_float_digits"] = str(self.extra_float_digits)
        return params


@dataclass
class Ledger:
    """What every client knows about every transaction it started, and everything counted."""

    # txn -> "open", "commit sent", "committed", "rolled back", "vanished <how>", "in doubt"
    state: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    steps: Counter[str] = field(default_factory=Counter)
    vanishes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    # Transactions some client was already reported to see: later sightings are only counted.
    sighted: Counter[str] = field(default_factory=Counter)
    clients: Counter[str] = field(default_factory=Counter)
    pinned_by: int | None = None

    def may_be_visible(self, txn: str) -> bool:
        return self.state.get(txn) in ("commit sent", "committed", "in doubt")

    def violation(self, text: str, kind: str) -> None:
        self.violations.append(f"[{kind}] {text}")
        self.kinds[kind] += 1


@dataclass(frozen=True)
class Baseline:
    """What a client that chose nothing must see: the server's own defaults."""

    timezone: str
    one_third: str


@dataclass(frozen=True)
class HarnessConfig:
    seed: int = 20240611
    clients: int = 20
    steps: int = 30
    # A step that has not finished in this long is a hang (longer than the proxy's borrow timeout,
    # so that a borrow timeout arrives as the proxy's FATAL, not as a hang).
    step_deadline: float = 15.0
    # The whole run: past this every client is told to stop.
    run_deadline: float = 240.0
    # Enough to know the proxy is broken: stop early rather than take minutes.
    max_violations: int = 25
    oracle_interval: float = 0.5

    @classmethod
    def from_environment(cls) -> HarnessConfig:
        defaults = cls()
        return cls(
            seed=env_int("LOCAL_TWIN_ISOLATION_SEED", defaults.seed),
            clients=env_int("LOCAL_TWIN_ISOLATION_CLIENTS", defaults.clients),
            steps=env_int("LOCAL_TWIN_ISOLATION_STEPS", defaults.steps),
            run_deadline=float(env_int("LOCAL_TWIN_ISOLATION_SECONDS", int(defaults.run_deadline))),
        )


# -- clients -----------------------------------------------------------------------------------


class Client:
    """One client connection with its identity and its model of what it must see."""

    def __init__(
        self, identity: Identity, endpoint: Endpoint, ledger: Ledger, baseline: Baseline, seed: int
    ) -> None:
        self.identity = identity
        self.tag = identity.tag
        self.endpoint = endpoint
        self.ledger = ledger
        self.baseline = baseline
        self.rng = random.Random(f"{seed}-{identity.number}")  # noqa: S311 - reproducible, not secret
        self.committed: set[tuple[str, int]] = set()
        self.txn_count = 0
        # Set when the client is gone (vanished, quit, or ended by a violation).
        self.gone = False
        self.hung = False
        self.where = "login"

    def new_txn(self) -> str:
        self.txn_count += 1
        txn = f"{self.tag}-t{self.txn_count}"
        self.ledger.state[txn] = "open"
        self.ledger.rows[txn] = 0
        return txn

    def fail(self, text: str, kind: str = WRONG_ANSWER) -> Violation:
        return Violation(f"{self.identity.kind} client {self.tag} ({self.where}): {text}", kind)

    def expect(self, condition: bool, text: str, kind: str = WRONG_ANSWER) -> None:
        if not condition:
            raise self.fail(text, kind)

    @property
    def expected_timezone(self) -> str:
        return self.identity.timezone or self.baseline.timezone

    @property
    def expected_one_third(self) -> str:
        digits = self.identity.extra_float_digits
        return self.baseline.one_third if digits is None else one_third(digits)

    def check_identity(self, application_name: str | None, timezone: str | None, third: str | None) -> None:
        """The session parameters this client chose at startup, or the server's for the ones it did not."""
        expected = (self.identity.application_name, self.expected_timezone, self.expected_one_third)
        self.expect(
            (application_name, timezone, third) == expected,
            f"application_name, TimeZone, 1/3 are {(application_name, timezone, third)}, not {expected}",
            FOREIGN_STATE,
        )

    def expect_clean(self, owner: str | None, temp_tables: str | None) -> None:
        """Nothing of a pinned session (its SET, its temporary table) outlives it."""
        self.expect(
            owner in (None, ""), f"sees {OWNER_SETTING} = {owner!r} of another session", FOREIGN_STATE
        )
        self.expect(
            temp_tables == "0", f"sees {temp_tables} temporary tables of another session", FOREIGN_STATE
        )

    def check_foreign(self, txns: list[str | None]) -> None:
        """Rows of other clients are visible only once their COMMIT was sent."""
        for txn in txns:
            if txn is not None and not self.ledger.may_be_visible(txn):
                self.ledger.sighted[txn] += 1
                if self.ledger.sighted[txn] == 1:
                    state = self.ledger.state.get(txn, "unknown")
                    text = f"sees rows of another client's transaction {txn}, which is {state}"
                    raise self.fail(text, UNFINISHED_ROWS)

    def check_own(self, seen: list[tuple[str | None, ...]], pending: set[tuple[str, int]]) -> None:
        rows = {(str(txn), int(str(seq))) for txn, seq in seen}
        expected = self.committed | pending
        if rows != expected or len(seen) != len(rows):
            missing = sorted(expected - rows)[:5]
            extra = sorted(rows - expected)[:5]
            raise self.fail(f"its own rows differ: missing {missing}, unexpected {extra}", OWN_ROWS)

    async def run(self, steps: int, deadline: float) -> int:
        """Steps until the budget is spent or the client is gone; returns the steps taken."""
        raise NotImplementedError

    def abandon(self) -> None:
        """Drop the connection at once (from the watchdog: the step has hung)."""
        raise NotImplementedError

    async def bounded(self, step: Callable[[], Awaitable[None]], deadline: float) -> None:
        """Run a step under a watchdog: past the deadline the connection is dropped under it, which
        ends any read it waits in (cancelling a driver's read would make it wait for a cancel)."""

        def expired() -> None:
            self.hung = True
            self.abandon()

        timer = asyncio.get_running_loop().call_later(deadline, expired)
        try:
            await step()
        except Violation:
            raise
        except Exception as exc:
            if self.hung:
                raise self.fail(f"no answer within {deadline:.0f} s", HANG) from exc
            # Under this load a borrow never waits long, unless connections were lost to clients gone.
            kind = BORROW_TIMEOUT if "Timed-out waiting to acquire" in str(exc) else WRONG_ANSWER
            raise self.fail(f"{type(exc).__name__}: {exc}", kind) from exc
        finally:
            timer.cancel()


class RawClient(Client):
    """The protocol by hand: every situation, including the ones no driver produces."""

    NAMED = "who"
    COMMON = "common"
    INSERT = "ins"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wire: Wire | None = None
        # This client's prepared statements: name -> text (the same names as every other client's).
        self.prepared: dict[str, str] = {}
        self.pinned = False
        self.pinned_steps_left = 0

    def abandon(self) -> None:
        if self.wire is not None:
            self.wire.abandon()

    @property
    def w(self) -> Wire:
        assert self.wire is not None
        return self.wire

    # -- talking -----------------------------------------------------------------------------

    async def login(self) -> None:
        endpoint = self.endpoint
        self.wire = await Wire.open(endpoint.host, endpoint.port)
        startup = {"user": endpoint.user, "database": endpoint.database, **self.identity.startup()}
        self.w.send(m.startup_message(startup))
        request = await self.w.frame()
        self.expect(
            request.kind == Backend.AUTHENTICATION and m.auth_code(request.body) == m.AUTH_MD5,
            f"no MD5 request: {request.raw!r}",
        )
        salt = request.body[4:8]
        self.w.send(m.password_message(md5_password(endpoint.user, endpoint.password, salt)))
        answer = self.check(Answer(await self.w.until(Backend.READY_FOR_QUERY)), "I")
        status = dict(
            m.read_parameter_status(f.raw) for f in answer.frames if f.kind == Backend.PARAMETER_STATUS
        )
        told = (status.get("application_name"), status.get("TimeZone"))
        expected = (self.identity.application_name, self.expected_timezone)
        self.expect(told == expected, f"login told {told}, not {expected}", FOREIGN_STATE)

    def check(self, answer: Answer, status: str, *, error: str | None = None) -> Answer:
        """The answer has the transaction status the client's model says, the one error expected (by
        SQLSTATE) or none, no notice, and no ParameterStatus of another client's identity."""
        for frame in answer.frames:
            if frame.kind == Backend.PARAMETER_STATUS:
                name, value = m.read_parameter_status(frame.raw)
                own = {"application_name": self.identity.application_name, "TimeZone": self.expected_timezone}
                if name in own:
                    self.expect(value == own[name], f"told {name} {value}", FOREIGN_STATE)
        codes = [e.get("C") for e in answer.errors]
        self.expect(codes == ([error] if error else []), f"errors {answer.errors}, expected {error}")
        self.expect(not answer.notices, f"unexpected notices {answer.notices}")
        self.expect(answer.status == status, f"status {answer.status!r} not {status!r} ({answer.kinds})")
        return answer

    async def query(self, sql: str, status: str = "I", *, error: str | None = None) -> Answer:
        self.w.send(m.simple_query(sql))
        return self.check(Answer(await self.w.until(Backend.READY_FOR_QUERY)), status, error=error)

    async def synced(self, messages: bytes, status: str = "I", *, error: str | None = None) -> Answer:
        self.w.send(messages + m.SYNC)
        return self.check(Answer(await self.w.until(Backend.READY_FOR_QUERY)), status, error=error)

    async def answers(self, count: int) -> list[m.Frame]:
        return [await self.w.frame() for _ in range(count)]

    # -- the steps -----------------------------------------------------------------------------

    async def run(self, steps: int, deadline: float) -> int:
        taken = 0
        self.where = "login"
        try:
            await self.bounded(self.login, deadline)
            while taken < steps and not self.gone:
                taken += 1
                action = self.choose()
                self.where = action.__name__.strip("_")
                self.ledger.steps[f"raw {self.where}"] += 1
                await self.bounded(action, deadline)
                if self.pinned:
                    self.pinned_steps_left -= 1
                    if self.pinned_steps_left <= 0 and not self.gone:
                        self.where = "quit after pinning"
                        await self.bounded(self._quit, deadline)
        except Violation as violation:
            self.ledger.violation(str(violation), violation.kind)
            self.gone = True
            if self.wire is not None:
                await self.wire.vanish(reset=True)
        finally:
            if self.pinned and self.ledger.pinned_by == self.identity.number:
                self.ledger.pinned_by = None
            if not self.gone and self.wire is not None:
                await self.wire.terminate()
        return max(taken, 1)

    def choose(self) -> Callable[[], Awaitable[None]]:
        actions: list[tuple[Callable[[], Awaitable[None]], int]] = [
            (self._transaction, 30),
            (self._read, 10),
            (self._session, 10),
            (self._named, 14),
            (self._unnamed, 6),
            (self._recoverable_error, 6),
            (self._copy, 5),
            (self._vanish_mid_pipeline, 4),
            (self._vanish_mid_transaction, 3),
            (self._vanish_mid_copy, 3),
            (self._vanish_in_error_state, 4),
            (self._quit, 2),
        ]
        if self.ledger.pinned_by is None and not self.pinned:
            actions.append((self._pin, 3))
        functions, weights = zip(*actions, strict=True)
        return self.rng.choices(functions, weights)[0]

    async def _insert(self, txn: str, seq: int, status: str) -> None:
        """One row, by a simple query or by this client's named INSERT statement."""
        if self.rng.random() < 0.5:
            await self.query(f"INSERT INTO {TABLE} VALUES ('{self.tag}', '{txn}', {seq})", status)
            return
        await self._ensure_insert_statement(status)
        await self.synced(bind(self.INSERT, [txn, str(seq)]) + execute(), status)

    async def _ensure_insert_statement(self, status: str) -> None:
        if self.INSERT not in self.prepared:
            text = f"INSERT INTO {TABLE} VALUES ('{self.tag}', $1, $2)"
            await self.synced(parse(self.INSERT, text), status)
            self.prepared[self.INSERT] = text

    async def _own_rows(self, pending: set[tuple[str, int]], status: str) -> None:
        answer = await self.query(f"SELECT txn, seq FROM {TABLE} WHERE client = '{self.tag}'", status)
        self.check_own(answer.rows, pending)

    async def _transaction(self) -> None:
        txn = self.new_txn()
        await self.query("BEGIN", "T")
        pending: set[tuple[str, int]] = set()
        for seq in range(self.rng.randint(1, 3)):
            await self._insert(txn, seq, "T")
            pending.add((txn, seq))
            self.ledger.rows[txn] += 1
            if self.rng.random() < 0.4:
                await self._own_rows(pending, "T")
        if self.rng.random() < 0.15:
            # An error inside the transaction: nothing of it may survive the ROLLBACK that must follow.
            await self.query("SELECT 1/(random() * 0)::int", "E", error="22012")
            await self.query("ROLLBACK", "I")
            self.ledger.state[txn] = "rolled back"
        elif self.rng.random() < 0.7:
            self.ledger.state[txn] = "commit sent"
            await self.query("COMMIT", "I")
            self.ledger.state[txn] = "committed"
            self.committed |= pending
        else:
            await self.query("ROLLBACK", "I")
            self.ledger.state[txn] = "rolled back"
        await self._own_rows(set(), "I")

    async def _read(self) -> None:
        await self._own_rows(set(), "I")
        answer = await self.query(f"SELECT DISTINCT txn FROM {TABLE} WHERE client <> '{self.tag}'")
        self.check_foreign([row[0] for row in answer.rows])

    async def _session(self) -> None:
        """Its own startup parameters, and no other client's session state."""
        answer = await self.query(
            "SELECT current_setting('application_name'), current_setting('TimeZone'), "
            f"(1.0::float8 / 3)::text, current_setting('{OWNER_SETTING}', true), "
            "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::text"
        )
        application_name, timezone, third, owner, temp_tables = answer.rows[0]
        self.check_identity(application_name, timezone, third)
        if self.pinned:
            self.expect(owner == self.tag, f"{OWNER_SETTING} is {owner!r} in its pinned session")
            own = await self.query("SELECT owner FROM iso_temp")
            self.expect(own.rows == [(self.tag,)], f"its temp table holds {own.rows}")
        else:
            self.expect_clean(owner, temp_tables)

    async def _named(self) -> None:
        """Statements named as every other client names them, answering with this client's tag."""
        if self.NAMED not in self.prepared or self.rng.random() < 0.2:
            text = f"SELECT ($1::int * 2)::text, '{self.tag}'::text"
            if self.NAMED in self.prepared:
                # Preparing a name twice is an error; the session goes on after the Sync.
                await self.synced(parse(self.NAMED, text), error="42P05")
            else:
                await self.synced(parse(self.NAMED, text))
                self.prepared[self.NAMED] = text
        number = self.rng.randint(1, 1000)
        answer = await self.synced(bind(self.NAMED, [str(number)]) + describe("P") + execute())
        self.expect(answer.rows == [(str(number * 2), self.tag)], f"{self.NAMED} answered {answer.rows}")
        if self.COMMON not in self.prepared:
            # The same text in every client: one statement on each database connection serves them all.
            await self.synced(parse(self.COMMON, "SELECT $1::text"))
            self.prepared[self.COMMON] = "SELECT $1::text"
        answer = await self.synced(bind(self.COMMON, [self.tag]) + execute())
        self.expect(answer.rows == [(self.tag,)], f"{self.COMMON} answered {answer.rows}")
        if self.rng.random() < 0.2:
            name = self.rng.choice(sorted(self.prepared))
            await self.synced(close("S", name))
            del self.prepared[name]

    async def _unnamed(self) -> None:
        number = self.rng.randint(1, 1000)
        text = f"SELECT '{self.tag}'::text, ($1::int + 1)::text"
        answer = await self.synced(parse("", text) + bind("", [str(number)]) + describe("P") + execute())
        self.expect(answer.kinds == "12TDCZ", f"unnamed statement answered {answer.kinds}")
        self.expect(answer.rows == [(self.tag, str(number + 1))], f"unnamed statement answered {answer.rows}")

    async def _recoverable_error(self) -> None:
        """A failing extended-protocol statement, then Sync: the error, and the session goes on."""
        messages = parse("", "SELECT 1/(random() * 0)::int") + bind("", []) + execute()
        await self.synced(messages + parse("", "SELECT 'skipped'") + bind("", []) + execute(), error="22012")
        answer = await self.query(f"SELECT '{self.tag}'")
        self.expect(answer.rows == [(self.tag,)], f"after the error: {answer.rows}")

    async def _copy(self) -> None:
        txn = self.new_txn()
        count = self.rng.randint(1, 4)
        await self.query("BEGIN", "T")
        self.w.send(m.simple_query(f"COPY {TABLE} FROM STDIN"))
        started = await self.w.frame()
        self.expect(started.kind == Backend.COPY_IN_RESPONSE, f"COPY answered {started.raw[:1]!r}")
        self.w.send(b"".join(copy_data(f"{self.tag}\t{txn}\t{seq}\n") for seq in range(count)) + COPY_DONE)
        self.check(Answer(await self.w.until(Backend.READY_FOR_QUERY)), "T")
        self.ledger.rows[txn] = count
        self.ledger.state[txn] = "commit sent"
        await self.query("COMMIT")
        self.ledger.state[txn] = "committed"
        self.committed |= {(txn, seq) for seq in range(count)}
        await self._own_rows(set(), "I")

    async def _pin(self) -> None:
        """SET and a temporary table: the session is pinned, and sees only its own of both."""
        self.ledger.pinned_by = self.identity.number
        self.pinned = True
        self.pinned_steps_left = self.rng.randint(1, 4)
        await self.query(f"SET {OWNER_SETTING} = '{self.tag}'")
        await self.query(f"CREATE TEMP TABLE iso_temp AS SELECT '{self.tag}'::text AS owner")
        await self._session()

    async def _quit(self) -> None:
        self.gone = True
        await self.w.terminate()

    async def _vanish(self, how: str, txn: str | None) -> None:
        """Gone without a word; what the client left must never be committed."""
        self.gone = True
        if txn is not None:
            self.ledger.state[txn] = f"vanished {how}"
        self.ledger.vanishes[how] += 1
        await self.w.vanish(reset=self.rng.random() < 0.5)

    async def _vanish_mid_pipeline(self) -> None:
        """An INSERT parsed, bound and executed, flushed, never synced: an implicit transaction open."""
        txn = self.new_txn()
        self.ledger.rows[txn] = 1
        if self.rng.random() < 0.5:
            await self._ensure_insert_statement("I")
            self.w.send(bind(self.INSERT, [txn, "0"]) + execute() + FLUSH)
            expected = "2C"
        else:
            text = f"INSERT INTO {TABLE} VALUES ('{self.tag}', '{txn}', 0)"
            self.w.send(parse("", text) + bind("", []) + execute() + FLUSH)
            expected = "12C"
        if self.rng.random() < 0.8:
            # Answered: the proxy has nothing outstanding; only the missing Sync says it is not over.
            got = "".join(chr(f.kind) for f in await self.answers(len(expected)))
            self.expect(got == expected, f"the flushed pipeline answered {got}")
        await self._vanish("mid-pipeline", txn)

    async def _vanish_mid_transaction(self) -> None:
        txn = self.new_txn()
        await self.query("BEGIN", "T")
        await self._insert(txn, 0, "T")
        self.ledger.rows[txn] = 1
        await self._vanish("mid-transaction", txn)

    async def _vanish_mid_copy(self) -> None:
        txn = self.new_txn()
        in_transaction = self.rng.random() < 0.5
        if in_transaction:
            await self.query("BEGIN", "T")
        self.w.send(m.simple_query(f"COPY {TABLE} FROM STDIN"))
        started = await self.w.frame()
        self.expect(started.kind == Backend.COPY_IN_RESPONSE, f"COPY answered {started.raw[:1]!r}")
        count = self.rng.randint(1, 3)
        self.w.send(b"".join(copy_data(f"{self.tag}\t{txn}\t{seq}\n") for seq in range(count)))
        self.ledger.rows[txn] = count
        await self._vanish("mid-COPY", txn)

    async def _vanish_in_error_state(self) -> None:
        """A statement fails with no Sync after it: the server skips everything until one comes."""
        txn: str | None = None
        messages = b""
        if self.rng.random() < 0.5:
            # An INSERT before the failure in the same unsynced pipeline: it must not survive either.
            txn = self.new_txn()
            self.ledger.rows[txn] = 1
            messages += parse("", f"INSERT INTO {TABLE} VALUES ('{self.tag}', '{txn}', 0)")
            messages += bind("", []) + execute()
        failing = self.rng.choice(
            [
                parse("", "SELECT 1/(random() * 0)::int") + bind("", []) + execute(),
                parse("", "SELECT * FROM iso_no_such_table"),
                bind("iso_no_such_portal_statement", []),
            ]
        )
        self.w.send(messages + failing + FLUSH)
        if self.rng.random() < 0.8:
            frames = await self.w.until(Backend.ERROR_RESPONSE)
            self.expect(Answer(frames).errors != [], "no error for the failing statement")
        await self._vanish("in error state", txn)


class DriverClient(Client):
    """A real driver's connection (psycopg 3 async or asyncpg): what applications actually send."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.psycopg: psycopg.AsyncConnection[Any] | None = None
        self.asyncpg: asyncpg.Connection | None = None

    async def login(self) -> None:
        e = self.endpoint
        if self.identity.kind == "psycopg":
            # libpq sends only application_name of the identity: TimeZone and 1/3 stay the server's.
            self.psycopg = await psycopg.AsyncConnection.connect(
                host=e.host,
                port=e.port,
                user=e.user,
                password=e.password,
                dbname=e.database,
                sslmode="disable",
                application_name=self.identity.application_name,
                autocommit=True,
                prepare_threshold=self.rng.choice([None, 0, 2]),
            )
        else:
            self.asyncpg = await asyncpg.connect(
                host=e.host,
                port=e.port,
                user=e.user,
                password=e.password,
                database=e.database,
                ssl=False,
                server_settings=self.identity.startup(),
                statement_cache_size=self.rng.choice([0, 100]),
            )

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        if self.psycopg is not None:
            cursor = await self.psycopg.execute(sql)
            return list(await cursor.fetchall()) if cursor.description else []
        assert self.asyncpg is not None
        return [tuple(record) for record in await self.asyncpg.fetch(sql)]

    async def doubled(self, number: int) -> list[tuple[Any, ...]]:
        """A statement the driver prepares under its own names, the same in every connection."""
        text = f"SELECT ($1::int * 2)::text, '{self.tag}'::text"
        if self.psycopg is not None:
            cursor = await self.psycopg.execute(text.replace("$1", "%s"), (number,), prepare=True)
            return list(await cursor.fetchall())
        assert self.asyncpg is not None
        return [tuple(record) for record in await self.asyncpg.fetch(text, number)]

    def abandon(self) -> None:
        if self.psycopg is not None:
            with contextlib.suppress(OSError, psycopg.Error):
                sock = socket.socket(fileno=self.psycopg.pgconn.socket)
                sock.shutdown(socket.SHUT_RDWR)
                sock.detach()
        elif self.asyncpg is not None:
            self.asyncpg.terminate()

    async def close(self) -> None:
        if self.psycopg is not None:
            await self.psycopg.close()
        if self.asyncpg is not None:
            await self.asyncpg.close(timeout=5)

    async def run(self, steps: int, deadline: float) -> int:
        taken = 0
        try:
            await self.bounded(self.login, deadline)
            while taken < steps and not self.gone:
                taken += 1
                action = self.rng.choices(
                    [self._transaction, self._read, self._session, self._prepared, self._vanish, self._quit],
                    [35, 15, 15, 20, 8, 2],
                )[0]
                self.where = action.__name__.strip("_")
                self.ledger.steps[f"{self.identity.kind} {self.where}"] += 1
                await self.bounded(action, deadline)
        except Violation as violation:
            self.ledger.violation(str(violation), violation.kind)
            self.gone = True
            self.abandon()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.close(), 5)
        return max(taken, 1)

    async def _own_rows(self, pending: set[tuple[str, int]]) -> None:
        rows = await self.fetch(f"SELECT txn, seq::text FROM {TABLE} WHERE client = '{self.tag}'")
        self.check_own(rows, pending)

    async def _transaction(self) -> None:
        txn = self.new_txn()
        await self.fetch("BEGIN")
        pending = set()
        for seq in range(self.rng.randint(1, 3)):
            await self.fetch(f"INSERT INTO {TABLE} VALUES ('{self.tag}', '{txn}', {seq})")
            pending.add((txn, seq))
            self.ledger.rows[txn] += 1
        await self._own_rows(pending)
        if self.rng.random() < 0.7:
            self.ledger.state[txn] = "commit sent"
            await self.fetch("COMMIT")
            self.ledger.state[txn] = "committed"
            self.committed |= pending
        else:
            await self.fetch("ROLLBACK")
            self.ledger.state[txn] = "rolled back"
        await self._own_rows(set())

    async def _read(self) -> None:
        await self._own_rows(set())
        rows = await self.fetch(f"SELECT DISTINCT txn FROM {TABLE} WHERE client <> '{self.tag}'")
        self.check_foreign([row[0] for row in rows])

    async def _session(self) -> None:
        rows = await self.fetch(
            "SELECT current_setting('application_name'), current_setting('TimeZone'), "
            f"(1.0::float8 / 3)::text, current_setting('{OWNER_SETTING}', true), "
            "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::text"
        )
        application_name, timezone, third, owner, temp_tables = rows[0]
        self.check_identity(application_name, timezone, third)
        self.expect_clean(owner, temp_tables)

    async def _prepared(self) -> None:
        number = self.rng.randint(1, 1000)
        rows = await self.doubled(number)
        self.expect(rows == [(str(number * 2), self.tag)], f"its prepared statement answered {rows}")

    async def _vanish(self) -> None:
        txn = self.new_txn()
        await self.fetch("BEGIN")
        await self.fetch(f"INSERT INTO {TABLE} VALUES ('{self.tag}', '{txn}', 0)")
        self.ledger.rows[txn] = 1
        self.ledger.state[txn] = "vanished mid-transaction"
        self.ledger.vanishes[f"{self.identity.kind} mid-transaction"] += 1
        self.gone = True
        self.abandon()

    async def _quit(self) -> None:
        self.gone = True


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Report:
    config: HarnessConfig
    ledger: Ledger
    seconds: float = 0.0
    lent_out_of_sync: int = 0
    final_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def violations(self) -> list[str]:
        return self.ledger.violations

    def summary(self) -> str:
        ledger = self.ledger
        states = Counter(state.split(" ")[0] for state in ledger.state.values())
        lines = [
            f"isolation: seed {self.config.seed}, {self.config.clients} clients x {self.config.steps} steps, "
            f"{sum(ledger.steps.values())} steps by {sum(ledger.clients.values())} clients "
            f"({dict(ledger.clients)}) in {self.seconds:.1f} s",
            f"  transactions: {dict(states)}",
            f"  vanished: {dict(ledger.vanishes)}",
            f"  steps: {dict(sorted(ledger.steps.items()))}",
            f"  lent_out_of_sync: {self.lent_out_of_sync}",
            f"  sightings of another client's unfinished rows: {sum(ledger.sighted.values())}",
            f"  violations: {len(ledger.violations)} {dict(ledger.kinds)}",
        ]
        # A few of each kind: one broken behaviour tends to show up in every client.
        for kind in ledger.kinds:
            examples = [text for text in ledger.violations if text.startswith(f"[{kind}]")]
            lines += [f"    - {text}" for text in examples[:4]]
            if len(examples) > 4:
                lines.append(f"      ... and {len(examples) - 4} more of this kind")
        return "\n".join(lines)


class Oracle:
    """PostgreSQL itself, through a direct superuser connection, and the proxy's counters."""

    def __init__(self, endpoint: Endpoint, ledger: Ledger) -> None:
        self.endpoint = endpoint
        self.ledger = ledger
        self.reported: set[str] = set()
        self.lent_out_of_sync = 0

    def _once(self, text: str, kind: str) -> None:
        if text not in self.reported:
            self.reported.add(text)
            self.ledger.violation(text, kind)

    async def check(self, conn: psycopg.AsyncConnection[Any], *, final: bool) -> None:
        cursor = await conn.execute(f"SELECT txn, count(*) FROM {TABLE} GROUP BY txn")
        found = {str(txn): int(count) for txn, count in await cursor.fetchall()}
        for txn, count in found.items():
            state = self.ledger.state.get(txn, "unknown")
            if state in ("committed", "commit sent", "in doubt"):
                if state == "committed" and count != self.ledger.rows[txn]:
                    text = f"oracle: transaction {txn} committed {count} rows of {self.ledger.rows[txn]}"
                    self._once(text, OWN_ROWS)
            else:
                self._once(
                    f"oracle: {count} row(s) of transaction {txn} committed, which was {state}", COMMITTED
                )
        if final:
            for txn, state in self.ledger.state.items():
                if state == "committed" and txn not in found:
                    self._once(f"oracle: committed transaction {txn} left no rows", OWN_ROWS)
        stats = await asyncio.to_thread(self.endpoint.stats)
        lent = int(stats.get("lent_out_of_sync", 0))
        if lent > self.lent_out_of_sync:
            self.lent_out_of_sync = lent
            self._once(f"proxy: lent_out_of_sync is {lent}", LENT_OUT_OF_SYNC)

    async def watch(self, conn: psycopg.AsyncConnection[Any], interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check(conn, final=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def server_baseline(admin_conninfo: str) -> Baseline:
    """The server's own defaults, asked of PostgreSQL directly."""
    with psycopg.connect(admin_conninfo) as conn:
        row = conn.execute("SELECT current_setting('TimeZone')").fetchone()
    assert row is not None
    # A client that chose no extra_float_digits gets the server's default, 1: the shortest exact form.
    return Baseline(timezone=str(row[0]), one_third=one_third(1))


def _make_client(number: int, seed: int, endpoint: Endpoint, ledger: Ledger, baseline: Baseline) -> Client:
    rng = random.Random(f"{seed}-identity-{number}")  # noqa: S311 - reproducible, not secret
    kind = rng.choices(["raw", "psycopg", "asyncpg"], [6, 2, 2])[0]
    chooses = kind != "psycopg"
    identity = Identity(
        number=number,
        kind=kind,
        timezone=rng.choice(TIMEZONES) if chooses and rng.random() < 0.8 else None,
        extra_float_digits=rng.choice(FLOAT_DIGITS) if chooses and rng.random() < 0.8 else None,
    )
    kind_of_client = RawClient if kind == "raw" else DriverClient
    client: Client = kind_of_client(identity, endpoint, ledger, baseline, seed)
    ledger.clients[kind] += 1
    return client


async def _after_the_run(endpoint: Endpoint, ledger: Ledger, baseline: Baseline, seed: int) -> None:
    """As many fresh clients as the pool has connections, each holding one in a transaction: every
    pooled connection must be clean (no transaction, no SET, no temporary table, the client's own
    parameters)."""
    stats = await asyncio.to_thread(endpoint.stats)
    clients = [
        RawClient(Identity(900000 + i, "raw", None, None), endpoint, ledger, baseline, seed)
        for i in range(int(stats["pool"]["cap"]))
    ]

    together = asyncio.Barrier(len(clients))

    async def probe(client: RawClient) -> str | None:
        client.where = "after the run"
        pid: list[str | None] = [None]

        async def steps() -> None:
            await client.login()
            await client._session()
            await client.query("BEGIN", "T")
            pid[0] = (await client.query("SELECT pg_backend_pid()::text", "T")).value()
            # Every probe in its transaction at once: each one holds a connection of its own.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(together.wait(), 10)
            await client.query("ROLLBACK")

        try:
            await client.bounded(steps, 20)
            return pid[0]
        except Violation as violation:
            ledger.violation(str(violation), violation.kind)
            return None
        finally:
            if client.wire is not None:
                await client.wire.terminate()

    pids = await asyncio.gather(*(probe(client) for client in clients))
    if None not in pids and len(set(pids)) != len(pids):
        ledger.violation(
            f"after the run: {len(clients)} clients in transactions share backends {pids}", WRONG_ANSWER
        )


async def run_isolation(endpoint: Endpoint, config: HarnessConfig) -> Report:
    ledger = Ledger()
    report = Report(config, ledger)
    started = time.monotonic()
    numbers = iter(range(10**6))
    async with await psycopg.AsyncConnection.connect(endpoint.admin_conninfo, autocommit=True) as admin:
        baseline = await asyncio.to_thread(server_baseline, endpoint.admin_conninfo)
        oracle = Oracle(endpoint, ledger)
        stop = asyncio.Event()
        run_ends = started + config.run_deadline

        async def slot() -> None:
            """A seat for one client at a time: a client that is gone is replaced until the seat's
            steps are spent."""
            left = config.steps
            while left > 0 and len(ledger.violations) < config.max_violations and time.monotonic() < run_ends:
                client = _make_client(next(numbers), config.seed, endpoint, ledger, baseline)
                try:
                    left -= await client.run(left, config.step_deadline)
                except Exception as exc:  # noqa: BLE001 - a bug of the harness must not stop the other clients
                    ledger.violation(f"client {client.tag}: {exc!r}", HARNESS)
                    left -= 1

        watcher = asyncio.create_task(oracle.watch(admin, config.oracle_interval, stop))
        try:
            await asyncio.gather(*(slot() for _ in range(config.clients)))
        finally:
            stop.set()
            await watcher
        if time.monotonic() > run_ends:
            ledger.violation(f"the run did not finish within {config.run_deadline:.0f} s", HANG)
        try:
            await asyncio.to_thread(endpoint.wait_quiescent)
        except AssertionError as exc:
            ledger.violation(f"once every client was gone: {exc}", NOT_QUIESCENT)
        await _after_the_run(endpoint, ledger, baseline, config.seed)
        with contextlib.suppress(AssertionError):
            await asyncio.to_thread(endpoint.wait_quiescent)
        await oracle.check(admin, final=True)
        cursor = await admin.execute(
            "SELECT state, count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s "
            "AND state <> 'idle' GROUP BY state",
            (endpoint.database, endpoint.user),
        )
        busy = await cursor.fetchall()
        if busy:
            ledger.violation(
                f"once every client was gone the database still has sessions {busy}", NOT_QUIESCENT
            )
        log = endpoint.log()
        if "Traceback" in log:
            start = log.index("Traceback")
            ledger.violation(log[start : start + 2000], CRASH)
        report.lent_out_of_sync = oracle.lent_out_of_sync
        report.final_stats = await asyncio.to_thread(endpoint.stats)
    report.seconds = time.monotonic() - started
    return report
