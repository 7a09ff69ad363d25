"""Protocol edge cases with hand-built bytes on a raw socket: what drivers never send."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from emulator.rdsproxy import texts
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend, Frontend
from emulator.wait import wait_until

from .helpers import ProxyUnderTest, RawClient, startup_packet

pytestmark = pytest.mark.integration


@pytest.fixture
def md5_proxy(make_proxy: Callable[..., ProxyUnderTest]) -> ProxyUnderTest:
    return make_proxy(iam_auth="DISABLED", require_tls=False, client_password_auth_type="POSTGRES_MD5")


def _login(proxy: ProxyUnderTest, **params: str) -> RawClient:
    client = RawClient(proxy.host, proxy.port)
    frames = client.login_md5(proxy.user, proxy.stack.db_password, proxy.database, **params)
    assert frames[-1].raw == m.ready_for_query(b"I")
    return client


def _refusal(proxy: ProxyUnderTest, packet: bytes) -> dict[str, str]:
    client = RawClient(proxy.host, proxy.port)
    client.send(packet)
    error = client.expect_error()
    assert client.closed()
    return error


def test_a_startup_packet_split_into_single_bytes_is_reassembled(md5_proxy: ProxyUnderTest) -> None:
    client = RawClient(md5_proxy.host, md5_proxy.port)
    client.send_slowly(m.startup_message({"user": md5_proxy.user, "database": md5_proxy.database}))
    request = client.read_frame()
    assert request.kind == Backend.AUTHENTICATION
    assert m.auth_code(request.body) == m.AUTH_MD5
    client.close()


def test_only_protocol_3_0_is_accepted(md5_proxy: ProxyUnderTest) -> None:
    packet = startup_packet(0x00030002, b"user\0app_user\0\0")
    error = _refusal(md5_proxy, packet)
    assert error["S"] == "FATAL"
    assert error["C"] == "0A000"
    assert error["M"] == texts.PROTOCOL_VERSION


def test_command_line_options_are_refused_in_rds_proxy_words(md5_proxy: ProxyUnderTest) -> None:
    error = _refusal(md5_proxy, m.startup_message({"user": "app_user", "options": "-c search_path=x"}))
    assert (error["C"], error["M"]) == (
        "0A000",
        "Feature not supported: RDS Proxy currently doesn\u2019t support command-line options.",
    )


def test_an_unknown_startup_parameter_is_refused_by_name(md5_proxy: ProxyUnderTest) -> None:
    error = _refusal(md5_proxy, m.startup_message({"user": "app_user", "statement_timeout": "5s"}))
    assert (error["C"], error["M"]) == (
        "0A000",
        "Feature not supported: RDS Proxy currently doesn't support the option statement_timeout.",
    )


def test_replication_is_refused(md5_proxy: ProxyUnderTest) -> None:
    error = _refusal(md5_proxy, m.startup_message({"user": "app_user", "replication": "database"}))
    assert error["M"] == texts.REPLICATION


def test_a_startup_without_user_is_refused(md5_proxy: ProxyUnderTest) -> None:
    error = _refusal(md5_proxy, m.startup_message({"database": "app"}))
    assert error["M"] == texts.MISSING_USER


def test_the_accepted_startup_parameters_are_reported_back(md5_proxy: ProxyUnderTest) -> None:
    client = _login(md5_proxy, application_name="raw-test", TimeZone="Asia/Tokyo", extra_float_digits="2")
    client.send(m.simple_query("SHOW TimeZone"))
    rows = [f for f in client.read_until(Backend.READY_FOR_QUERY) if f.kind == Backend.DATA_ROW]
    assert rows[0].body.endswith(b"Asia/Tokyo")
    client.send(m.TERMINATE)
    client.close()


def test_gssenc_is_declined_and_the_startup_goes_on(md5_proxy: ProxyUnderTest) -> None:
    client = RawClient(md5_proxy.host, md5_proxy.port)
    client.send(startup_packet(m.GSSENC_REQUEST))
    assert client.sock.recv(1) == b"N"
    client.send(m.startup_message({"user": md5_proxy.user}))
    assert client.read_frame().kind == Backend.AUTHENTICATION
    client.close()


def test_ssl_is_declined_when_the_proxy_has_no_certificate(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    proxy = make_proxy(iam_auth="DISABLED", require_tls=False, tls_cert_file="", tls_key_file="")
    client = RawClient(proxy.host, proxy.port)
    client.send(m.ssl_request())
    assert client.sock.recv(1) == b"N"
    client.close()


@pytest.mark.parametrize(
    "after_yes",
    [b"", b"\x16\x03\x01\x02\x00\x01", b"not a TLS record at all"],
    ids=["nothing", "half a ClientHello", "not TLS"],
)
def test_a_client_that_closes_its_end_after_an_ssl_request_is_let_go_at_once(
    md5_proxy: ProxyUnderTest, after_yes: bytes
) -> None:
    # Half-closed right after the SSLRequest (its EOF may arrive before the "S" is written), or after
    # a broken handshake: no handshake can come, so the connection ends now, not at the login timeout.
    client = RawClient(md5_proxy.host, md5_proxy.port)
    client.send(m.ssl_request())
    answered = b""
    if after_yes:
        answered = client.sock.recv(1)
        client.send(after_yes)
    client.sock.shutdown(socket.SHUT_WR)
    client.sock.settimeout(3)  # TimeoutError: the proxy kept the connection
    while data := client.sock.recv(1000):
        answered += data
    client.close()
    assert answered.startswith(b"S")  # then, at most, TLS's alert


def test_a_cancel_request_is_accepted_and_ignored(md5_proxy: ProxyUnderTest) -> None:
    client = RawClient(md5_proxy.host, md5_proxy.port)
    client.send(struct.pack("!IIII", 16, m.CANCEL_REQUEST, 1234, 5678))
    assert client.closed()


def test_bytes_smuggled_after_an_ssl_request_end_the_connection(md5_proxy: ProxyUnderTest) -> None:
    client = RawClient(md5_proxy.host, md5_proxy.port)
    client.send(m.ssl_request() + m.startup_message({"user": "app_user"}))
    error = client.expect_error()
    assert error["C"] == "08P01"
    assert client.closed()


def test_an_oversized_startup_packet_ends_the_connection(md5_proxy: ProxyUnderTest) -> None:
    client = RawClient(md5_proxy.host, md5_proxy.port)
    client.send(struct.pack("!II", 1_000_000, m.PROTOCOL_3_0))
    assert client.expect_error()["C"] == "08P01"
    assert client.closed()


def test_a_malformed_message_ends_that_client_only(md5_proxy: ProxyUnderTest) -> None:
    bystander = _login(md5_proxy)
    bystander.send(m.simple_query("BEGIN"))
    bystander.read_until(Backend.READY_FOR_QUERY)
    offender = _login(md5_proxy)
    offender.send(b"Q" + struct.pack("!I", 2))  # a length below 4 is impossible
    error = offender.expect_error()
    assert (error["S"], error["C"]) == ("FATAL", "08P01")
    assert offender.closed()
    bystander.send(m.simple_query("SELECT 42"))
    frames = bystander.read_until(Backend.READY_FOR_QUERY)
    assert any(f.kind == Backend.DATA_ROW and f.body.endswith(b"42") for f in frames)
    assert frames[-1].raw == m.ready_for_query(b"T")
    bystander.send(m.simple_query("COMMIT"))
    bystander.read_until(Backend.READY_FOR_QUERY)
    bystander.close()


def test_an_oversized_message_gets_a_fatal_error(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    proxy = make_proxy(
        iam_auth="DISABLED",
        require_tls=False,
        client_password_auth_type="POSTGRES_MD5",
        max_message_bytes=100_000,
    )
    client = _login(proxy)
    client.send(m.simple_query("SELECT '" + "x" * 200_000 + "'"))
    error = client.expect_error()
    assert (error["S"], error["C"]) == ("FATAL", "08P01")
    assert "exceeds" in error["M"]
    assert client.closed()


def test_pipelined_simple_queries_in_one_packet_each_get_their_answers(md5_proxy: ProxyUnderTest) -> None:
    client = _login(md5_proxy)
    client.send(m.simple_query("SELECT 1") + m.simple_query("SELECT 2") + m.simple_query("SELECT 3"))
    values = []
    for _ in range(3):
        values += [
            f.body[-1:] for f in client.read_until(Backend.READY_FOR_QUERY) if f.kind == Backend.DATA_ROW
        ]
    assert values == [b"1", b"2", b"3"]
    client.close()


def test_a_large_row_arrives_whole(md5_proxy: ProxyUnderTest) -> None:
    client = _login(md5_proxy)
    client.send(m.simple_query("SELECT repeat('ab', 2000000)"))
    rows = [f for f in client.read_until(Backend.READY_FOR_QUERY) if f.kind == Backend.DATA_ROW]
    assert len(rows[0].body) == 2 + 4 + 4_000_000
    client.close()


def test_a_sync_with_nothing_outstanding_needs_no_database_connection(md5_proxy: ProxyUnderTest) -> None:
    client = _login(md5_proxy)
    before = md5_proxy.stats()["borrows"]
    client.send(m.SYNC)
    assert client.read_frame().raw == m.ready_for_query(b"I")
    assert md5_proxy.stats()["borrows"] == before
    client.close()


def test_an_unknown_prepared_statement_is_an_error_then_the_session_goes_on(
    md5_proxy: ProxyUnderTest,
) -> None:
    client = _login(md5_proxy)
    client.send(
        m.frame(Frontend.BIND, b"\0nope\0" + struct.pack("!HHH", 0, 0, 0))
        + m.frame(Frontend.EXECUTE, b"\0" + b"\0\0\0\0")
        + m.SYNC
    )
    error = client.expect_error()
    assert (error["C"], error["M"]) == ("26000", 'prepared statement "nope" does not exist')
    assert client.read_frame().raw == m.ready_for_query(b"I")
    client.send(m.simple_query("SELECT 7"))
    assert any(f.kind == Backend.DATA_ROW for f in client.read_until(Backend.READY_FOR_QUERY))
    client.close()


def test_a_client_that_stops_reading_holds_back_its_server_not_the_proxy(md5_proxy: ProxyUnderTest) -> None:
    # 40 MB of rows for a client that reads nothing for a while: the proxy stops reading that
    # database connection (instead of buffering it all), other clients are served meanwhile, and
    # every byte arrives in order once the client reads again.
    slow = _login(md5_proxy)
    slow.send(m.simple_query("SELECT i, repeat('x', 4000) FROM generate_series(1, 10000) AS i"))
    before = _resident_kb(md5_proxy.emulator.pid)
    wait_until(
        lambda: any(s["db_reading_paused"] for s in md5_proxy.emulator.sessions()),
        component="the emulator (pausing a database connection)",
        timeout=30,
    )
    other = _login(md5_proxy)
    other.send(m.simple_query("SELECT 42"))
    answer = other.read_until(Backend.READY_FOR_QUERY)
    assert [f.kind for f in answer] == [
        Backend.ROW_DESCRIPTION,
        Backend.DATA_ROW,
        Backend.COMMAND_COMPLETE,
        Backend.READY_FOR_QUERY,
    ]
    grown_mb = (_resident_kb(md5_proxy.emulator.pid) - before) / 1024
    assert grown_mb < 20, f"the proxy grew by {grown_mb:.0f} MB buffering what its client would not read"
    rows = 0
    for frame in slow.read_until(Backend.READY_FOR_QUERY):
        if frame.kind == Backend.DATA_ROW:
            rows += 1
            assert frame.body[6 : 6 + len(str(rows))] == str(rows).encode()
    assert rows == 10000
    slow.close()
    other.close()


def _resident_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
