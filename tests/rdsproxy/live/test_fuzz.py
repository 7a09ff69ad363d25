"""Protocol fuzzing on the raw socket: valid message sequences, mutated (bytes flipped, lengths wrong,
frames truncated or repeated, unknown letters, huge declared lengths), during login and after it.

Whatever arrives, the proxy must end each fuzzed connection with an answer, a FATAL or a close once
the client has said all it will (half-closed its side), within a deadline; stay alive; keep serving a
healthy client on its own connection, whose every answer is checked while the fuzzing goes on; be
quiescent afterwards; and log no Python traceback.

CI runs a small budget (LOCAL_TWIN_FUZZ_EXAMPLES, 100 by default, shared by the tests); the examples
are derandomized there so that a CI failure reproduces, and random elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from emulator.rdsproxy.auth import md5_password
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend, Frontend

from .helpers import ProxyUnderTest, RawClient
from .isolation import bind, close, copy_data, describe, execute, parse

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("LOCAL_TWIN_FUZZ_EXAMPLES", "") or 100)
# After the client half-closes, the proxy has this long to finish the connection.
DEADLINE = 5.0
# A short borrow timeout: a pool emptied by connections stuck for good says so quickly.
MD5 = {
    "require_tls": False,
    "iam_auth": "DISABLED",
    "client_password_auth_type": "POSTGRES_MD5",
    "connection_borrow_timeout": 5,
}
SCRAM = {"require_tls": False, "iam_auth": "DISABLED", "client_password_auth_type": "POSTGRES_SCRAM_SHA_256"}
SINK = "fuzz_sink"


def fuzz_settings(share: float) -> settings:
    return settings(
        max_examples=max(1, int(EXAMPLES * share)),
        # No shrinking: a proxy a failing example broke for good cannot tell smaller examples apart.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        deadline=None,
        database=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- the healthy client ----------------------------------------------------------------------


@dataclass
class Bystander:
    """A client on its own connection that keeps asking and checking, in a thread, while the fuzzing
    goes on: every answer right, none slower than a few seconds."""

    proxy: ProxyUnderTest
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bystander", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(7)  # noqa: S311 - reproducible, not secret
        try:
            with self.proxy.connect(application_name="bystander") as conn:
                while not self._stop.is_set():
                    number = rng.randint(0, 10**6)
                    started = time.monotonic()
                    query = "SELECT %s::int * 2, current_setting('application_name')"
                    if rng.random() < 0.2:
                        with conn.transaction():
                            answer = conn.execute(query, (number,)).fetchone()
                    else:
                        answer = conn.execute(query, (number,)).fetchone()
                    took = time.monotonic() - started
                    if answer != (number * 2, "bystander"):
                        self.failures.append(f"asked for {number * 2}, got {answer}")
                    if took > DEADLINE:
                        self.failures.append(f"a query took {took:.1f} s")
                    self.answered += 1
                    # Paced, so that the fuzzing is not starved of the two cores.
                    self._stop.wait(0.01)
        except Exception as exc:  # noqa: BLE001 - whatever stops the healthy client is the finding
            self.failures.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(DEADLINE * 2)
        if self._thread.is_alive():
            self.failures.append("the healthy client is stuck in a query")


# -- fuzzed connections ----------------------------------------------------------------------


@dataclass
class Outcome:
    frames: list[m.Frame]
    ended: str  # "closed", "reset", "TLS error"

    @property
    def fatal(self) -> dict[str, str] | None:
        for frame in self.frames:
            if frame.kind == Backend.ERROR_RESPONSE:
                fields = m.parse_message_fields(frame.body)
                if fields.get("S") == "FATAL":
                    return fields
        return None

    @property
    def summary(self) -> str:
        if self.fatal is not None:
            return f"FATAL {self.fatal.get('C')}"
        if any(f.kind == Backend.READY_FOR_QUERY for f in self.frames):
            return "answered"
        return self.ended


def _answered(raw: bytes) -> bool:
    """A ReadyForQuery or a FATAL among the complete frames of raw (a frame's letter and length
    are enough to walk them; what a frame says is read later)."""
    offset = 0
    while len(raw) - offset >= 5:
        kind = raw[offset]
        (length,) = struct.unpack_from("!I", raw, offset + 1)
        if length < 4 or len(raw) < offset + 1 + length:
            return False
        end = offset + 1 + length
        if kind == Backend.READY_FOR_QUERY or (
            kind == Backend.ERROR_RESPONSE and b"SFATAL\0" in raw[offset:end]
        ):
            return True
        offset = end
    return False


def finish(sock: socket.socket | ssl.SSLSocket, *, wait_for_answer: float = 0.0) -> Outcome:
    """Wait a moment for an answer, then half-close: the client has said everything, and the proxy
    must end the connection within the deadline."""
    raw = b""
    ended = "closed"
    try:
        answer_by = time.monotonic() + wait_for_answer
        while not _answered(raw) and (left := answer_by - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            raw += data
        # The TCP half-close, under TLS too (SSLSocket.shutdown would drop the TLS state we still
        # need to read the answer). It fails when the proxy has already reset the connection.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_WR)
        deadline = time.monotonic() + DEADLINE
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no end of the connection within {DEADLINE} s; got {raw[-200:]!r}")
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            raw += data
    except ConnectionResetError:
        ended = "reset"
    except ssl.SSLError:
        ended = "TLS error"
    finally:
        sock.close()
    frames = m.FrameReader()
    frames.feed(raw)
    got: list[m.Frame] = []
    # Not frames when the 'S'/'N' answer to an SSLRequest comes first (or the proxy wrote garbage).
    with contextlib.suppress(m.ProtocolViolation):
        got.extend(frames.frames())
    return Outcome(got, ended)


def session_ends(proxy: ProxyUnderTest, peer: str) -> None:
    """The proxy's session for this client connection is over, not only its socket: a session stuck
    in there would keep its database connection for good."""
    deadline = time.monotonic() + DEADLINE
    while True:
        sessions = [s for s in proxy.emulator.sessions() if s["peer"] == peer]
        if not sessions:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the proxy's session outlived its client connection: {sessions}")
        time.sleep(0.05)


def next_client_is_served(proxy: ProxyUnderTest, number: int) -> None:
    """The client after this one, with parameters of its own (so that the proxy must align the
    connection it gets, most likely the one just given back), is answered at once: no connection was
    handed on out of sync."""
    canary = RawClient(proxy.host, proxy.port)
    canary.sock.settimeout(DEADLINE)
    peer = peer_of(canary.sock)
    try:
        canary.login_md5(
            proxy.user, proxy.stack.db_password, proxy.database, application_name=f"canary-{number}"
        )
        canary.send(m.simple_query("SELECT 'canary'"))
        frames = canary.read_until(Backend.READY_FOR_QUERY)
    except (TimeoutError, ConnectionError) as exc:
        raise AssertionError(f"the next client was not served: {exc!r}") from None
    finally:
        canary.close()
    assert [f.body for f in frames if f.kind == Backend.DATA_ROW] == [b"\0\x01\0\0\0\x06canary"]
    assert proxy.stats().get("lent_out_of_sync", 0) == 0
    session_ends(proxy, peer)


def peer_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def connect(proxy: ProxyUnderTest) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=DEADLINE)


def login_md5(proxy: ProxyUnderTest) -> socket.socket:
    sock = connect(proxy)
    sock.sendall(m.startup_message({"user": proxy.user, "database": proxy.database}))
    reader = m.FrameReader()
    while True:
        reader.feed(sock.recv(65536))
        frames = list(reader.frames())
        if frames:
            break
    salt = frames[0].body[4:8]
    sock.sendall(m.password_message(md5_password(proxy.user, proxy.stack.db_password, salt)))
    seen = b""
    while not seen.endswith(m.ready_for_query(b"I")):
        data = sock.recv(65536)
        assert data, "the proxy closed a good login"
        seen += data
    return sock


# -- mutations of valid sequences ------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    kind: str
    message: int
    offset: int
    value: int

    def apply(self, messages: list[bytearray], *, framed: bool) -> None:
        """framed: every message has a letter and a length (after login); else the first has no letter."""
        if not messages:
            return
        index = self.message % len(messages)
        target = messages[index]
        header = 0 if not framed and index == 0 else 1
        if self.kind == "flip" and target:
            target[self.offset % len(target)] ^= self.value % 255 + 1
        elif self.kind == "truncate":
            del target[self.offset % (len(target) + 1) :]
        elif self.kind == "length" and len(target) >= header + 4:
            lengths = [0, 1, 3, 4, len(target) - header - 1, len(target) - header + 1, 0x3FFFFFF0, 0x7FFFFFFF]
            length = lengths[self.value % len(lengths)] if self.value % 3 else self.value & 0xFFFFFFFF
            target[header : header + 4] = struct.pack("!I", length & 0xFFFFFFFF)
        elif self.kind == "letter" and header and target:  # (an earlier truncate may have emptied it)
            target[0] = self.value % 256
        elif self.kind == "insert":
            target[self.offset % (len(target) + 1) : self.offset % (len(target) + 1)] = bytes(
                [self.value % 256]
            ) * (1 + self.value % 5)
        elif self.kind == "invalid utf-8" and target:
            # A lone continuation byte and an overlong encoding where text was.
            spot = self.offset % len(target)
            target[spot : spot + 2] = b"\x80\xc0"
        elif self.kind == "duplicate":
            messages.insert(index, bytearray(target))
        elif self.kind == "drop":
            del messages[index]


mutations = st.lists(
    st.builds(
        Mutation,
        kind=st.sampled_from(
            ["flip", "truncate", "length", "letter", "insert", "invalid utf-8", "duplicate", "drop"]
        ),
        message=st.integers(0, 20),
        offset=st.integers(0, 1000),
        value=st.integers(0, 2**32 - 1),
    ),
    min_size=1,
    max_size=3,
)


def after_login_sequences() -> list[list[bytes]]:
    """Valid things a client sends once logged in."""
    select = parse("", "SELECT $1::int + 1") + bind("", ["41"]) + describe("P") + execute()
    return [
        [m.simple_query("SELECT 1")],
        [m.simple_query("SELECT 'a'; SELECT 'b'")],
        [parse("", "SELECT $1::int + 1"), bind("", ["41"]), describe("P"), execute(), m.SYNC],
        [parse("fz", "SELECT $1::text"), bind("", ["x"]), execute(), close("S", "fz"), m.SYNC],
        [select, m.frame(Frontend.FLUSH), m.SYNC],
        [m.simple_query("BEGIN"), m.simple_query("SELECT 2"), m.simple_query("COMMIT")],
        [m.simple_query(f"COPY {SINK} FROM STDIN"), copy_data("1\tone\n"), m.frame(Frontend.COPY_DONE)],
        [
            m.simple_query(f"COPY {SINK} FROM STDIN"),
            copy_data("2\ttwo\n"),
            m.frame(Frontend.COPY_FAIL, b"no\0"),
        ],
        [m.frame(Frontend.FUNCTION_CALL, struct.pack("!IHHI", 1598, 0, 0, 0)), m.SYNC],
        [parse("", "SELECT 1"), m.SYNC, m.TERMINATE],
    ]


def login_sequences(proxy: ProxyUnderTest) -> list[list[bytes]]:
    """Valid (or validly shaped) things a client sends while logging in."""
    startup = m.startup_message({"user": proxy.user, "database": proxy.database, "application_name": "fz"})
    return [
        [startup, m.password_message("md5" + "0" * 32)],
        [m.ssl_request(), startup],
        [struct.pack("!II", 8, m.GSSENC_REQUEST), startup, m.password_message("x")],
        [struct.pack("!IIII", 16, m.CANCEL_REQUEST, 1, 2)],
        [startup, m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abcdefghijkl")],
        [
            startup,
            m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abcdefghijkl"),
            m.sasl_response(b"c=biws,r=abcdefghijklXXXX,p=AAAA"),
        ],
    ]


# -- the tests -------------------------------------------------------------------------------


@pytest.fixture
def md5_proxy(make_proxy: Callable[..., ProxyUnderTest]) -> ProxyUnderTest:
    proxy = make_proxy(**MD5)
    with proxy.stack.postgres.admin_connection(proxy.database) as admin:
        admin.execute(f"CREATE TABLE IF NOT EXISTS {SINK} (n int, note text)")
        admin.execute(f'ALTER TABLE {SINK} OWNER TO "{proxy.user}"')
    return proxy


@pytest.fixture
def healthy() -> Iterator[Callable[[ProxyUnderTest], Bystander]]:
    """A healthy client of the proxy being fuzzed, checked after the test."""
    started: list[Bystander] = []

    def start(proxy: ProxyUnderTest) -> Bystander:
        bystander = Bystander(proxy)
        started.append(bystander)
        bystander.start()
        return bystander

    yield start
    for bystander in started:
        bystander.stop()
    for bystander in started:
        assert bystander.failures == [], bystander.failures
        assert bystander.answered > 0


def no_traceback(proxy: ProxyUnderTest) -> None:
    log = proxy.emulator.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") :][:3000]


def still_alive(proxy: ProxyUnderTest) -> None:
    assert proxy.stats()["target_ready"]
    with psycopg.connect(**proxy.conninfo()) as conn:
        assert conn.execute("SELECT 'alive'").fetchone() == ("alive",)


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)

    def note(self, outcome: Outcome) -> None:
        self.outcomes[outcome.summary] += 1


def test_mutated_sequences_after_login_end_each_connection_in_time_and_spare_a_healthy_client(
    md5_proxy: ProxyUnderTest, healthy: Callable[[ProxyUnderTest], Bystander]
) -> None:
    bystander = healthy(md5_proxy)
    tally = Tally()
    sequences = after_login_sequences()

    @fuzz_settings(0.6)
    @given(choice=st.integers(0, len(sequences) - 1), changes=mutations, split=st.integers(0, 64))
    def fuzz(choice: int, changes: list[Mutation], split: int) -> None:
        messages = [bytearray(message) for message in sequences[choice]]
        for change in changes:
            change.apply(messages, framed=True)
        data = b"".join(messages)
        sock = login_md5(md5_proxy)
        peer = peer_of(sock)
        # Sometimes in two writes, so that a frame may arrive cut in two.
        cut = min(split, len(data))
        # The proxy may end the connection before it has read everything: that is an answer too.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data[:cut])
            sock.sendall(data[cut:])
        try:
            tally.note(finish(sock, wait_for_answer=0.3))
            session_ends(md5_proxy, peer)
            next_client_is_served(md5_proxy, sum(tally.outcomes.values()))
        except AssertionError as exc:
            # Named here: a proxy left broken for good cannot replay the example for Hypothesis.
            raise AssertionError(f"{exc}\nafter the client that sent {data!r}") from None

    fuzz()
    print(f"after login: {dict(tally.outcomes)}; the healthy client answered {bystander.answered}")
    still_alive(md5_proxy)
    no_traceback(md5_proxy)


@pytest.mark.parametrize("auth", ["md5", "scram"])
def test_mutated_logins_end_each_connection_in_time_and_spare_a_healthy_client(
    make_proxy: Callable[..., ProxyUnderTest],
    md5_proxy: ProxyUnderTest,
    healthy: Callable[[ProxyUnderTest], Bystander],
    auth: str,
) -> None:
    proxy = md5_proxy if auth == "md5" else make_proxy(**SCRAM)
    bystander = healthy(md5_proxy)
    tally = Tally()
    sequences = login_sequences(proxy)

    @fuzz_settings(0.2)
    @given(choice=st.integers(0, len(sequences) - 1), changes=mutations)
    def fuzz(choice: int, changes: list[Mutation]) -> None:
        messages = [bytearray(message) for message in sequences[choice]]
        for change in changes:
            change.apply(messages, framed=False)
        sock = connect(proxy)
        # The startup packet first, then the rest once the proxy asked for it (as a client would).
        sock.sendall(bytes(messages[0]) if messages else b"")
        asked = b""
        if len(messages) > 1:
            sock.settimeout(1.0)
            try:
                asked = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                asked = b""
            if asked:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b"".join(messages[1:]))
        tally.note(finish(sock))

    fuzz()
    print(f"login ({auth}): {dict(tally.outcomes)}; the healthy client answered {bystander.answered}")
    still_alive(proxy)
    no_traceback(proxy)


def test_mutated_tls_and_iam_logins_leave_the_default_proxy_serving(
    proxy: ProxyUnderTest, healthy: Callable[[ProxyUnderTest], Bystander]
) -> None:
    # The stack's own proxy (TLS and IAM required): garbage where the TLS handshake or the token
    # should be.
    bystander = healthy(proxy)
    tally = Tally()
    startup = m.startup_message({"user": proxy.user, "database": proxy.database})
    context = ssl.create_default_context(cafile=proxy.ca)

    @fuzz_settings(0.2)
    @given(changes=mutations, tls=st.booleans())
    def fuzz(changes: list[Mutation], tls: bool) -> None:
        sock: Any = connect(proxy)
        if tls:
            sock.sendall(m.ssl_request())
            assert sock.recv(1) == b"S"
            sock = context.wrap_socket(sock, server_hostname="localhost")
            messages = [bytearray(startup), bytearray(m.password_message(proxy.token()))]
        else:
            messages = [bytearray(m.ssl_request()), bytearray(b"\x16\x03\x01\x00\x05hello")]
        for change in changes:
            change.apply(messages, framed=False)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            sock.sendall(b"".join(messages))
        tally.note(finish(sock))

    fuzz()
    print(f"TLS/IAM login: {dict(tally.outcomes)}; the healthy client answered {bystander.answered}")
    still_alive(proxy)
    no_traceback(proxy)
