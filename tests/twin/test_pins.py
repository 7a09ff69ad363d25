"""Pins read back from the proxy's log: the lines the proxy writes, with their reason and digest."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from emulator.rdsproxy.protocol.pinning import REASON_TOO_LONG, pin_reason
from emulator.rdsproxy.proxylog import ProxyLog
from emulator.twin.pins import Pin, pins_in

pytestmark = pytest.mark.unit


@dataclass
class Connection:
    id: int
    peer: str = "127.0.0.1:5555"


def _log_of_a_run() -> str:
    stream = io.StringIO()
    log = ProxyLog(stream)
    log.client_connected(Connection(7))
    reason = pin_reason("SET search_path TO app, public")
    assert reason is not None
    log.pinned(Connection(7), Connection(3), reason)
    log.client_closed(Connection(7), "The client requested that the connection close.")
    log.pinned(Connection(9), Connection(4), REASON_TOO_LONG)
    return stream.getvalue()


def test_each_pin_line_the_proxy_writes_is_a_pin_with_its_reason_and_digest() -> None:
    pins = pins_in(_log_of_a_run())
    assert [(pin.client_connection, pin.db_connection, pin.digest) for pin in pins] == [
        (7, 3, "set search_path to $1,$2"),
        (9, 4, None),
    ]
    assert pins[0].reason == (
        "SQL changed session settings that the proxy doesn't track. Consider moving session configuration "
        "to the proxy's initialization query."
    )
    assert pins[1].reason == REASON_TOO_LONG
    assert pins[0].logged_at.endswith("Z")


def test_a_pin_reads_as_the_log_says_it() -> None:
    pin = Pin(7, 3, "Reason text.", "set x = $1", "2026-01-01T00:00:00.000Z")
    assert str(pin) == '[clientConnection=7 dbConnection=3] Reason text. Digest: "set x = $1".'


def test_other_lines_and_a_pin_line_cut_short_are_no_pins() -> None:
    text = _log_of_a_run()
    first_pin = text.splitlines()[1]
    assert pins_in(first_pin[: len(first_pin) // 2]) == []
    assert pins_in("2026-01-01T00:00:00.000Z [INFO] A new client connected from 127.0.0.1:1.\n") == []
