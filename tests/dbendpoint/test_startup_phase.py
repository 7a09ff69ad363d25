"""The startup phase at the endpoint, with raw sockets: what PostgreSQL itself would not accept is
not accepted here either, and nobody holds a connection open without saying who they are."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import pytest

from emulator.rdsproxy.protocol import messages as m

from .conftest import TLS_HOSTNAMES, Lab, RunningEndpoint, instance, topology

pytestmark = pytest.mark.integration


def until_closed(sock: socket.socket) -> bytes:
    """Everything the endpoint sends until it closes the connection."""
    received = b""
    while True:
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


@pytest.fixture
def endpoint(lab: Lab, make_endpoint: Callable[..., RunningEndpoint]) -> RunningEndpoint:
    certificate = lab.ca.issue_server("dbendpoint-startup", TLS_HOSTNAMES)
    return make_endpoint(
        topology("db-instance-1", instance("db-instance-1", lab.servers["a"], "writer")),
        tls_cert_file=str(certificate.cert_path),
        tls_key_file=str(certificate.key_path),
        startup_timeout_seconds=1,
    )


def test_a_client_that_says_nothing_is_closed_after_the_startup_timeout(endpoint: RunningEndpoint) -> None:
    with socket.create_connection(("127.0.0.1", endpoint.writer_port), timeout=30) as sock:
        assert until_closed(sock) == b""


def test_plain_bytes_after_sslrequest_end_the_connection(endpoint: RunningEndpoint) -> None:
    # As PostgreSQL since CVE-2021-23214: data sent with the SSLRequest, before the handshake, could
    # be an attacker's; the connection ends without a 'S'.
    with socket.create_connection(("127.0.0.1", endpoint.writer_port), timeout=30) as sock:
        sock.sendall(m.ssl_request() + m.startup_message({"user": "app"}))
        assert until_closed(sock) == b""


def test_gssencrequest_is_declined_and_the_session_goes_on(endpoint: RunningEndpoint) -> None:
    with socket.create_connection(("127.0.0.1", endpoint.writer_port), timeout=30) as sock:
        sock.sendall(struct.pack("!II", 8, m.GSSENC_REQUEST))
        assert sock.recv(1) == b"N"
        sock.sendall(m.startup_message({"user": "app", "database": "appdb"}))
        # PostgreSQL's own answer: it asks for the password (SCRAM).
        kind, _length, code = struct.unpack("!BII", sock.recv(9))
        assert (chr(kind), code) == ("R", m.AUTH_SASL)


def test_an_impossible_startup_length_ends_the_connection_as_postgresql_does(
    endpoint: RunningEndpoint,
) -> None:
    # PostgreSQL logs "invalid length of startup packet" and closes without a word.
    with socket.create_connection(("127.0.0.1", endpoint.writer_port), timeout=30) as sock:
        sock.sendall(struct.pack("!II", 3, 196608))
        assert until_closed(sock) == b""
