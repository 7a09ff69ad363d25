"""The local CA's certificates pass a real TLS handshake with hostname verification."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from emulator.stack.tls import LocalCA

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("server_name", ["localhost", "127.0.0.1"])
def test_clients_can_verify_the_server_with_the_ca_file(tmp_path: Path, server_name: str) -> None:
    ca = LocalCA(tmp_path)
    cert = ca.issue_server("proxy", ["localhost", "127.0.0.1"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert.cert_path, cert.key_path)
    client_ctx = ssl.create_default_context(cafile=str(ca.ca_path))

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            assert tls.recv(2) == b"ok"
        thread.join(5)


def test_a_name_not_in_the_certificate_is_rejected(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path)
    cert = ca.issue_server("proxy", ["localhost"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert.cert_path, cert.key_path)
    client_ctx = ssl.create_default_context(cafile=str(ca.ca_path))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                server_ctx.wrap_socket(conn, server_side=True).close()
            except ssl.SSLError:
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"),
        ):
            client_ctx.wrap_socket(raw, server_hostname="proxy.example.com")
        thread.join(5)


def test_the_private_key_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    cert = LocalCA(tmp_path).issue_server("postgres", ["localhost"])
    assert cert.key_path.stat().st_mode & 0o077 == 0
