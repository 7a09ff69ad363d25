"""The startup phase's bytes: the client's packets kept raw, the server's BackendKeyData found."""

from __future__ import annotations

import struct

import pytest

from emulator.dbendpoint.startup import (
    CANCEL_REQUEST,
    SSL_REQUEST,
    BackendKeyWatcher,
    ProtocolViolation,
    StartupParser,
)
from emulator.rdsproxy.protocol import messages as m

pytestmark = pytest.mark.unit


def test_packets_arrive_whole_and_raw_even_byte_by_byte() -> None:
    startup = m.startup_message({"user": "app", "database": "appdb"})
    stream = m.ssl_request() + startup
    parser = StartupParser()
    packets = []
    for byte in stream:
        parser.feed(bytes([byte]))
        packet = parser.packet()
        if packet is not None:
            packets.append(packet)
    assert [p.code for p in packets] == [SSL_REQUEST, 0x30000]
    assert packets[1].raw == startup
    assert (packets[1].user, packets[1].database) == ("app", "appdb")


def test_the_database_defaults_to_the_user_as_in_postgresql() -> None:
    parser = StartupParser()
    parser.feed(m.startup_message({"user": "app"}))
    packet = parser.packet()
    assert packet is not None
    assert packet.database == "app"


def test_a_cancel_request_carries_its_key() -> None:
    raw = struct.pack("!IIII", 16, CANCEL_REQUEST, 4242, 0xDEADBEEF)
    parser = StartupParser()
    parser.feed(raw)
    packet = parser.packet()
    assert packet is not None
    assert packet.cancel_key == (4242, bytes.fromhex("deadbeef"))
    assert packet.raw == raw


@pytest.mark.parametrize("length", [4, 7, 10_001])
def test_an_impossible_length_is_a_protocol_violation(length: int) -> None:
    parser = StartupParser()
    parser.feed(struct.pack("!II", length, 196608))
    with pytest.raises(ProtocolViolation, match="invalid length of startup packet"):
        parser.packet()


def server_welcome(pid: int, key: int) -> bytes:
    return (
        m.authentication(m.AUTH_OK)
        + m.parameter_status("server_version", "15.18")
        + m.backend_key_data(pid, key)
        + m.ready_for_query(b"I")
    )


def test_the_watcher_finds_backend_key_data_split_anywhere() -> None:
    data = server_welcome(3210, 0x01020304)
    for cut in range(1, len(data)):
        watcher = BackendKeyWatcher()
        found = [watcher.feed(data[:cut]), watcher.feed(data[cut:])]
        assert [k for k in found if k is not None] == [(3210, bytes.fromhex("01020304"))]
        assert watcher.done


def test_the_watcher_stops_at_a_failed_login() -> None:
    watcher = BackendKeyWatcher()
    assert watcher.feed(m.error_response("FATAL", "28P01", "password authentication failed")) is None
    assert watcher.done
    assert watcher.feed(m.backend_key_data(1, 2)) is None
