"""The server's answers on their way to the client: status remembered, known parameters held back."""

from __future__ import annotations

import pytest

from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend
from emulator.rdsproxy.protocol.parameters import SessionParameters
from emulator.rdsproxy.protocol.routing import Expect, ResponseRouter
from emulator.rdsproxy.protocol.server import ServerState, relay

pytestmark = pytest.mark.unit

ROW = m.frame(Backend.DATA_ROW, b"\x00\x01\x00\x00\x00\x011")
DONE = m.frame(Backend.COMMAND_COMPLETE, b"SELECT 1\0")


def _relay(router: ResponseRouter, server: ServerState, parameters: SessionParameters, data: bytes) -> bytes:
    frames = m.FrameReader()
    frames.feed(data)
    return b"".join(relay(frames, router, server, parameters))


@pytest.mark.parametrize("bulk", [True, False], ids=["simple query in bulk", "extended one by one"])
def test_a_parameter_the_client_has_seen_is_held_back_and_a_new_one_passes(bulk: bool) -> None:
    router = ResponseRouter()
    router.expect(Expect.QUERY if bulk else Expect.EXECUTE)
    if not bulk:
        router.expect(Expect.SYNC)
    assert router.passthrough() is bulk
    parameters = SessionParameters({}, {"TimeZone": "UTC"})
    server = ServerState()
    seen = m.parameter_status("TimeZone", "UTC")
    new = m.parameter_status("TimeZone", "Asia/Tokyo")
    ready = m.ready_for_query(b"T")
    out = _relay(router, server, parameters, seen + ROW + new + DONE + ready)
    assert out == ROW + new + DONE + ready
    assert server.txn_status == b"T"
    assert server.params["TimeZone"] == "Asia/Tokyo"
    assert router.idle


def test_a_message_cut_by_tcp_waits_for_its_end() -> None:
    router = ResponseRouter()
    router.expect(Expect.QUERY)
    server = ServerState()
    parameters = SessionParameters({}, {})
    whole = ROW + DONE + m.ready_for_query(b"I")
    frames = m.FrameReader()
    frames.feed(whole[:7])
    assert relay(frames, router, server, parameters) == []
    frames.feed(whole[7:])
    assert b"".join(relay(frames, router, server, parameters)) == whole


@pytest.mark.parametrize("bulk", [True, False], ids=["simple query in bulk", "extended one by one"])
def test_the_servers_own_fatal_is_held_back_and_remembered(bulk: bool) -> None:
    router = ResponseRouter()
    router.expect(Expect.QUERY if bulk else Expect.EXECUTE)
    if not bulk:
        router.expect(Expect.SYNC)
    server = ServerState()
    shutdown = m.error_response("FATAL", "57P01", "terminating connection due to administrator command")
    out = _relay(router, server, SessionParameters({}, {}), ROW + shutdown)
    # The rows before it pass; the FATAL does not (the proxy reports the loss in its own words).
    assert out == ROW
    assert server.fatal
    assert not server.ended_by_fatal
    assert server.fatal_reason == "terminating connection due to administrator command (SQLSTATE 57P01)"


def test_a_fatal_the_client_caused_reaches_it() -> None:
    router = ResponseRouter()
    router.expect(Expect.QUERY)
    server = ServerState()
    violation = m.error_response("FATAL", "08P01", "invalid frontend message type 89")
    assert _relay(router, server, SessionParameters({}, {}), violation) == violation
    assert server.ended_by_fatal
