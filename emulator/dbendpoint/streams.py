"""The two connections of a session, the client's and the instance's, and the splice that joins them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass

from emulator.dbendpoint.startup import BackendKeyWatcher, CancelKey, ProtocolViolation
from emulator.dbendpoint.topology import Instance

_CHUNK = 64 * 1024
_HEADER = struct.Struct("!BI")
# Typed messages a client sends during authentication (password, SASL) are small.
MAX_STARTUP_MESSAGE = 1 << 20


class ClientStream:
    """The client's connection, after the endpoint answered SSLRequest (TLS ends here when configured)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.tls = False

    @property
    def peer(self) -> str:
        address = self.writer.get_extra_info("peername")
        return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)

    @property
    def local_address(self) -> tuple[str, int]:
        """The endpoint's address the client connected to (an IAM token is signed for host:port)."""
        address = self.writer.get_extra_info("sockname")
        return str(address[0]), int(address[1])

    async def read_message(self, max_size: int = MAX_STARTUP_MESSAGE) -> tuple[int, bytes]:
        """One typed message (type byte, body): a gate reads PasswordMessage and SASL responses so."""
        kind, length = _HEADER.unpack(await self.reader.readexactly(5))
        if length < 4 or length - 4 > max_size:
            raise ProtocolViolation(f"invalid message length {length}")
        return kind, await self.reader.readexactly(length - 4)

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> None:
        self.writer.write(b"S")
        await self.writer.drain()
        await self.writer.start_tls(context, ssl_handshake_timeout=timeout)
        self.tls = True

    def refuse(self) -> None:
        """Close at once with a reset, before any byte: what a client of a dead address sees (its
        connect() is refused; here the TCP handshake already happened, so the nearest is a reset)."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()


@dataclass
class UpstreamStream:
    """A plain TCP connection to one instance (PostgreSQL's own address)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    instance: Instance
    # A gate that reads the server's BackendKeyData itself (instead of leaving it to the splice)
    # puts the key here, so that CancelRequests still find the session's instance.
    backend_key: CancelKey | None = None

    def close(self) -> None:
        self.writer.close()


async def open_upstream(instance: Instance, timeout: float) -> UpstreamStream:
    """Connect to the instance; OSError (refused, unreachable) or TimeoutError when it is down."""
    # asyncio and uvloop both set TCP_NODELAY on their TCP connections.
    reader, writer = await asyncio.wait_for(asyncio.open_connection(instance.host, instance.port), timeout)
    return UpstreamStream(reader, writer, instance)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    watch: Callable[[bytes], None] | None = None,
) -> None:
    """Copy until EOF; drain() after each write holds reading back while the other side is slow."""
    while True:
        data = await reader.read(_CHUNK)
        if not data:
            return
        if watch is not None:
            watch(data)
        writer.write(data)
        await writer.drain()


async def splice(
    client: ClientStream,
    upstream: UpstreamStream,
    on_backend_key: Callable[[CancelKey], None],
) -> None:
    """Bytes both ways until either side closes, then both are closed. The server's first messages
    are watched for BackendKeyData (on_backend_key), unless the gate already saw it."""
    watcher = BackendKeyWatcher()
    if upstream.backend_key is not None:
        on_backend_key(upstream.backend_key)
        watcher.done = True

    def watch(data: bytes) -> None:
        if not watcher.done:
            key = watcher.feed(data)
            if key is not None:
                on_backend_key(key)

    to_server = asyncio.ensure_future(_pump(client.reader, upstream.writer))
    to_client = asyncio.ensure_future(_pump(upstream.reader, client.writer, watch))
    try:
        await asyncio.wait((to_server, to_client), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_server, to_client):
            task.cancel()
        for task in (to_server, to_client):
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError, ssl.SSLError):
                await task
        upstream.close()
        client.close()
