"""A name that points at a stopped instance, and an instance that stops under its sessions."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Callable

import psycopg
import pytest

from emulator.net import free_port
from emulator.wait import wait_until

from .conftest import APP_DATABASE, APP_USER, Lab, RunningEndpoint, connect, instance, server_port, topology

pytestmark = pytest.mark.integration


def psql_error(port: int, sslmode: str) -> str:
    done = subprocess.run(
        [
            "psql",
            "-X",
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            APP_USER,
            "-d",
            APP_DATABASE,
            "-c",
            "SELECT 1",
        ],
        env={"PGSSLMODE": sslmode, "PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    return done.stderr


@pytest.mark.parametrize("sslmode", ["disable", "prefer"])
def test_a_name_pointing_at_a_stopped_instance_drops_the_connection_before_any_byte(
    lab: Lab, make_endpoint: Callable[..., RunningEndpoint], sslmode: str
) -> None:
    dead = free_port()
    endpoint = make_endpoint(topology("db-instance-1", instance("db-instance-1", dead, "fenced")))
    # A dead address refuses the TCP handshake; the endpoint has accepted it and resets it at once,
    # before any byte: libpq reports it as a reset (with the hint it gives a refusal) or, when the reset
    # meets its first read rather than its connect, as a server that closed the connection.
    hint = "Is the server running on that host and accepting TCP/IP connections?"
    closed = "server closed the connection unexpectedly"
    assert f"Connection refused\n\t{hint}" in connect_error(dead, sslmode)
    reset = connect_error(endpoint.writer_port, sslmode)
    assert f"Connection reset by peer\n\t{hint}" in reset or closed in reset
    assert "Connection refused" in psql_error(dead, sslmode)
    psql_says = psql_error(endpoint.writer_port, sslmode)
    assert "Connection reset by peer" in psql_says or closed in psql_says
    assert first_byte(endpoint.writer_port) == b""


def first_byte(port: int) -> bytes:
    """What a raw client receives first (nothing, when reset; often its connect() already fails)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            return raw.recv(1)
    except ConnectionResetError:
        return b""


def connect_error(port: int, sslmode: str) -> str:
    with pytest.raises(psycopg.OperationalError) as raised:
        connect(port, sslmode=sslmode).close()
    return str(raised.value)


def test_sessions_on_an_instance_that_stops_are_dropped(
    lab: Lab, make_endpoint: Callable[..., RunningEndpoint]
) -> None:
    server = lab.start_server("d")
    try:
        endpoint = make_endpoint(topology("db-instance-1", instance("db-instance-1", server, "writer")))
        assert server_port(endpoint.writer_port) == server.port
        sessions = [connect(endpoint.writer_port) for _ in range(3)]
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        stopper.join(60)
        for conn in sessions:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
            conn.close()
        # And new connections find a dead address.
        wait_until(
            lambda: not _connects(endpoint.writer_port),
            component="the endpoint of a stopped instance",
            timeout=10,
        )
    finally:
        server.stop()


def _connects(port: int) -> bool:
    try:
        connect(port).close()
    except psycopg.OperationalError:
        return False
    return True
