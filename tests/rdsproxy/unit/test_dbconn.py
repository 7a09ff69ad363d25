"""A database connection's TLS, done in memory by its protocol: against a TLS server on loopback (the
event loop's own TLS, as a stand-in for PostgreSQL), the proxy's writes and the server's answers go
through it for stream reads and for a borrowing session alike; the server's close_notify ends the
connection after what came before it; a handshake that fails fails the upgrade."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from emulator.rdsproxy.dbconn import DatabaseError, _database_tls, _open_stream, connection_died
from emulator.stack.tls import LocalCA

pytestmark = pytest.mark.unit

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def server_tls(tmp_path: Path) -> ssl.SSLContext:
    certificate = LocalCA(tmp_path).issue_server("postgres", ["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert_path, certificate.key_path)
    return context


async def _server(handler: Handler) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def _answer_ssl_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    assert await reader.readexactly(8) == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    writer.write(b"S")
    await writer.drain()


def test_an_upgraded_connection_carries_writes_and_answers_to_stream_reads_and_to_a_session(
    server_tls: ssl.SSLContext,
) -> None:
    async def scenario() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _answer_ssl_request(reader, writer)
            await writer.start_tls(server_tls)
            writer.write(b"echo:" + await reader.read(65536))
            while data := await reader.read(65536):
                writer.write(data)

        server = await _server(echo)
        reader, raw, protocol = await _open_stream("127.0.0.1", _port(server))
        raw.write(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
        assert await reader.readexactly(1) == b"S"
        transport = await protocol.start_tls(raw, _database_tls(), "127.0.0.1")
        assert transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        transport.write(b"startup")
        assert await reader.read(100) == b"echo:startup"  # the proxy's own exchanges
        received: list[bytes] = []
        answered = asyncio.get_running_loop().create_future()

        def sink(data: bytes) -> None:
            received.append(data)
            if b"".join(received) == b"Q" * 100_000:
                answered.set_result(None)

        protocol.sink, protocol.on_lost = sink, lambda exc: None  # a session borrows it
        transport.write(b"Q" * 100_000)
        await asyncio.wait_for(answered, 10)
        transport.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_the_servers_close_notify_ends_the_connection_after_its_last_message(
    server_tls: ssl.SSLContext,
) -> None:
    async def scenario() -> None:
        async def terminate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _answer_ssl_request(reader, writer)
            await writer.start_tls(server_tls)
            await reader.read(100)
            writer.write(b"E...FATAL: terminating connection due to administrator command")
            # (closed on return: close_notify, then the socket closes)

        server = await _server(terminate)
        reader, raw, protocol = await _open_stream("127.0.0.1", _port(server))
        raw.write(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
        await reader.readexactly(1)
        transport = await protocol.start_tls(raw, _database_tls(), "127.0.0.1")
        received: list[bytes] = []
        lost = asyncio.get_running_loop().create_future()
        protocol.sink = received.append
        protocol.on_lost = lambda exc: lost.done() or lost.set_result(exc)
        transport.write(b"Q")
        exc = await asyncio.wait_for(lost, 10)
        assert b"".join(received) == b"E...FATAL: terminating connection due to administrator command"
        assert isinstance(exc, ConnectionResetError)
        assert transport.is_closing()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_a_handshake_that_fails_fails_the_upgrade(server_tls: ssl.SSLContext) -> None:
    async def scenario() -> None:
        async def not_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _answer_ssl_request(reader, writer)
            await reader.read(65536)  # the ClientHello
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()
            await reader.read(65536)

        server = await _server(not_tls)
        reader, raw, protocol = await _open_stream("127.0.0.1", _port(server))
        raw.write(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
        await reader.readexactly(1)
        with pytest.raises(ssl.SSLError):
            await asyncio.wait_for(protocol.start_tls(raw, _database_tls(), "127.0.0.1"), 10)
        assert raw.is_closing()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("failure", "died"),
    [
        (DatabaseError({"S": "FATAL", "C": "57P01", "M": "terminating connection"}), True),
        (ConnectionResetError("database connection closed"), True),
        (asyncio.IncompleteReadError(b"", 5), True),
        (DatabaseError({"S": "ERROR", "C": "22023", "M": "invalid value"}), False),
        (TimeoutError(), False),  # slow, not dead: the proxy's own deadline says what to do
    ],
)
def test_an_exchange_failed_by_its_connections_death_is_told_from_one_failed_by_what_it_asked(
    failure: BaseException, died: bool
) -> None:
    assert connection_died(failure) is died
