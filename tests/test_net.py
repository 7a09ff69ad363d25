"""The ports the kit chooses for the servers it configures."""

from __future__ import annotations

import socket
from pathlib import Path

import port_for
import pytest

from emulator import net
from emulator.net import LOOPBACK, free_port

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_a_free_port_is_outside_the_ephemeral_range_so_no_outgoing_connection_takes_it() -> None:
    if not EPHEMERAL_RANGE.exists():
        pytest.skip("the ephemeral range is read from /proc (Linux)")
    low, high = (int(field) for field in EPHEMERAL_RANGE.read_text().split())

    ports = {free_port() for _ in range(50)}

    assert all(not low <= port <= high for port in ports), sorted(ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, port))


def test_a_port_in_use_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy, socket.socket() as probe:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        probe.bind((LOOPBACK, 0))
        free = probe.getsockname()[1]
        probe.close()
        taken = busy.getsockname()[1]
        monkeypatch.setattr(net, "_good_ranges", lambda: ((taken, taken), (free, free)))

        assert {free_port() for _ in range(20)} == {free}


def test_no_good_port_range_is_port_fors_own_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(net, "_good_ranges", tuple)

    with pytest.raises(port_for.PortForException, match="Can't select a port"):
        free_port()
