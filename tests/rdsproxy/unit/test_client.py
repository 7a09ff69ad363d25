"""The client connection's protocol: bytes to the session as they come, writes through TLS, and a
TLS session's end (the client's close_notify, or the proxy's) without an error escaping a write."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import pytest

from emulator.rdsproxy.client import ClientProtocol
from emulator.stack.tls import LocalCA

pytestmark = pytest.mark.unit


class Transport:
    """What the event loop's TCP transport does for the protocol: keeps what is written."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        if not self.closing:
            self.written += data

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class TlsClient:
    """A driver's end of the TLS session, in memory."""

    def __init__(self, ca: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def handshake_step(self, received: bytes) -> bytes:
        self.incoming.write(received)
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def read(self, received: bytes) -> bytes:
        self.incoming.write(received)
        chunks = []
        try:
            while chunk := self.tls.read(65536):
                chunks.append(chunk)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        return b"".join(chunks)


@pytest.fixture
def server_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    ca = LocalCA(tmp_path)
    certificate = ca.issue_server("proxy", ["localhost"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert_path, certificate.key_path)
    return context, ca.ca_path


async def _connected_over_tls(
    server_context: tuple[ssl.SSLContext, Path],
) -> tuple[ClientProtocol, Transport, TlsClient, list[BaseException | None]]:
    context, ca = server_context

    async def session(protocol: ClientProtocol) -> None:
        await protocol.start_tls(context)

    protocol = ClientProtocol(session, asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    client = TlsClient(ca)
    to_server = client.handshake_step(b"")
    for _ in range(10):
        await asyncio.sleep(0)  # the session task reaches start_tls
        if to_server:
            protocol.data_received(to_server)
        to_server = client.handshake_step(transport.take())
        if client.tls.version() is not None and not to_server:
            break
    await asyncio.sleep(0)
    assert client.tls.version() is not None, "the handshake did not finish"
    lost: list[BaseException | None] = []
    protocol.attach(lambda data: None, lost.append)
    return protocol, transport, client, lost


def test_a_write_over_tls_reaches_the_client_as_written(
    server_context: tuple[ssl.SSLContext, Path],
) -> None:
    async def scenario() -> None:
        protocol, transport, client, _ = await _connected_over_tls(server_context)
        protocol.write(b"Z\x00\x00\x00\x05I")
        assert client.read(transport.take()) == b"Z\x00\x00\x00\x05I"

    asyncio.run(scenario())


def test_the_clients_close_notify_ends_the_session_like_eof(
    server_context: tuple[ssl.SSLContext, Path],
) -> None:
    async def scenario() -> None:
        protocol, _transport, client, lost = await _connected_over_tls(server_context)
        with contextlib.suppress(ssl.SSLWantReadError):
            client.tls.unwrap()
        protocol.data_received(client.outgoing.read())
        assert lost == [None]
        assert protocol.at_eof

    asyncio.run(scenario())


def test_a_write_after_the_proxy_closed_the_tls_session_is_dropped_not_raised(
    server_context: tuple[ssl.SSLContext, Path],
) -> None:
    async def scenario() -> None:
        protocol, transport, client, _ = await _connected_over_tls(server_context)
        protocol.close()
        assert transport.is_closing()
        transport.closing = False  # a write racing the close, before the transport says so
        protocol.write(b"late")  # must not raise: the session's last words are simply lost
        assert client.read(transport.take()) == b""

    asyncio.run(scenario())
