"""TLS in memory, both ends of it: a handshake carried by hand between two MemoryTls, data each way,
the peer's close_notify, bytes that are not TLS, and the transport that encrypts what is written."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest

from emulator.rdsproxy.memorytls import MemoryTls, TlsTransport
from emulator.stack.tls import LocalCA

pytestmark = pytest.mark.unit


@pytest.fixture
def contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The proxy's side of a client connection (server) and a client that verifies it."""
    ca = LocalCA(tmp_path)
    certificate = ca.issue_server("proxy", ["localhost"])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certificate.cert_path, certificate.key_path)
    client = ssl.create_default_context(cafile=str(ca.ca_path))
    return server, client


def _handshake(server: MemoryTls, client: MemoryTls) -> None:
    """Carry each side's flight to the other until neither has anything to say."""
    flight = client.start()
    for _ in range(10):
        if flight:
            assert server.receive(flight) == b""
        reply = server.outgoing()
        flight = b""
        if reply:
            assert client.receive(reply) == b""
            flight = client.outgoing()
        if not reply and not flight:
            return
    raise AssertionError("the handshake did not settle")


def _connected(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> tuple[MemoryTls, MemoryTls]:
    """The proxy's end and a client's, handshaken (in a running event loop: the handshake's futures)."""
    server = MemoryTls(contexts[0], server_side=True)
    client = MemoryTls(contexts[1], server_side=False, server_hostname="localhost")
    _handshake(server, client)
    return server, client


def test_two_ends_complete_a_handshake_and_carry_data_both_ways(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def scenario() -> None:
        server = MemoryTls(contexts[0], server_side=True)
        client = MemoryTls(contexts[1], server_side=False, server_hostname="localhost")
        server_done, client_done = server.handshake, client.handshake
        _handshake(server, client)
        assert not server.handshaking
        assert not client.handshaking
        assert server_done is not None
        assert server_done.done()
        assert server_done.exception() is None
        assert client_done is not None
        assert client_done.done()
        assert client_done.exception() is None
        assert server.handshake is None, "nothing of the handshake is kept once it is over"
        assert client.receive(server.encrypt(b"R" * 70_000)) == b"R" * 70_000  # several records
        assert server.receive(client.encrypt(b"Q\x00\x00\x00\x05x")) == b"Q\x00\x00\x00\x05x"

    asyncio.run(scenario())


def test_a_record_split_anywhere_is_decrypted_once_it_is_whole(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def scenario() -> None:
        server, client = _connected(contexts)
        records = client.encrypt(b"first") + client.encrypt(b"second")
        received = [server.receive(records[i : i + 7]) for i in range(0, len(records), 7)]
        assert b"".join(received) == b"firstsecond"

    asyncio.run(scenario())


def test_the_peers_close_notify_comes_after_the_data_before_it(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def scenario() -> None:
        server, client = _connected(contexts)
        last = server.encrypt(b"E...FATAL") + server.close_notify()
        assert client.receive(last) == b"E...FATAL"
        assert client.closed
        with pytest.raises(ssl.SSLError):
            server.encrypt(b"after the close_notify")

    asyncio.run(scenario())


def test_bytes_that_are_not_tls_fail_the_handshake(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def scenario() -> None:
        server = MemoryTls(contexts[0], server_side=True)
        handshake = server.handshake
        assert handshake is not None
        with pytest.raises(ssl.SSLError):
            server.receive(b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
        assert handshake.done()
        assert isinstance(handshake.exception(), ssl.SSLError)

    asyncio.run(scenario())


def test_a_certificate_the_client_does_not_trust_fails_its_handshake_with_an_alert_to_send(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], tmp_path: Path
) -> None:
    async def scenario() -> None:
        server = MemoryTls(contexts[0], server_side=True)
        (tmp_path / "other").mkdir()
        stranger = LocalCA(tmp_path / "other")
        client = MemoryTls(
            ssl.create_default_context(cafile=str(stranger.ca_path)),
            server_side=False,
            server_hostname="localhost",
        )
        handshake = client.handshake
        server.receive(client.start())
        with pytest.raises(ssl.SSLCertVerificationError):
            client.receive(server.outgoing())
        assert handshake is not None
        assert isinstance(handshake.exception(), ssl.SSLCertVerificationError)
        assert client.outgoing().startswith(b"\x15"), "a TLS alert record for the server"

    asyncio.run(scenario())


def test_a_connection_that_ends_during_the_handshake_fails_it(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def scenario() -> None:
        client = MemoryTls(contexts[1], server_side=False, server_hostname="localhost")
        handshake = client.handshake
        client.start()
        client.abandon(ConnectionResetError("gone"))
        assert handshake is not None
        with pytest.raises(ConnectionResetError):
            await handshake

    asyncio.run(scenario())


class RawTransport:
    """What the event loop's TCP transport does for TlsTransport: keeps what is written."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "a write on a closed transport (uvloop raises)"
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 5432)}.get(name, default)


def test_the_transport_encrypts_writes_and_ends_with_a_close_notify(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def scenario() -> None:
        server, client = _connected(contexts)
        raw = RawTransport()
        transport = TlsTransport(raw, client)  # type: ignore[arg-type]
        transport.write(b"Q\x00\x00\x00\x0dSELECT 1\x00")
        assert b"SELECT" not in raw.written
        assert server.receive(bytes(raw.written)) == b"Q\x00\x00\x00\x0dSELECT 1\x00"
        raw.written.clear()
        transport.close()
        assert raw.is_closing()
        assert transport.is_closing()
        assert server.receive(bytes(raw.written)) == b""
        assert server.closed
        transport.write(b"too late")  # dropped, as on a closed TCP transport: no error
        assert transport.get_extra_info("sockname") == ("127.0.0.1", 5432)
        assert transport.get_extra_info("ssl_object") is client.ssl

    asyncio.run(scenario())
