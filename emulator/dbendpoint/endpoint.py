"""One endpoint (one DNS name): a listener whose connections go where its route points.

Per connection: route and connect to the instance first, before reading a byte (a name that points
at a dead address gets the client's connection reset at once: ClientStream.refuse); then the startup
phase (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage); then the gate; then the splice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from emulator.dbendpoint.cancels import CancelRoutes
from emulator.dbendpoint.gate import Gate, GateRefused
from emulator.dbendpoint.routing import Route
from emulator.dbendpoint.settings import EndpointSettings
from emulator.dbendpoint.startup import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    SSL_REQUEST,
    CancelKey,
    ProtocolViolation,
    StartupPacket,
    StartupParser,
)
from emulator.dbendpoint.streams import ClientStream, UpstreamStream, open_upstream, splice
from emulator.dbendpoint.topology import Instance, Topology
from emulator.rdsproxy.protocol import messages as m

log = logging.getLogger("emulator.dbendpoint")

# A cancelled backend's server closes the cancel connection at once; no longer wait than this.
_CANCEL_ANSWER_SECONDS = 10.0


class EndpointListener:
    def __init__(
        self,
        route: Route,
        *,
        settings: EndpointSettings,
        topology: Callable[[], Topology],
        gate: Gate,
        cancels: CancelRoutes,
        tls_context: ssl.SSLContext | None,
    ) -> None:
        self.route = route
        self.settings = settings
        self._topology = topology
        self._gate = gate
        self._cancels = cancels
        self._tls_context = tls_context
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, self.settings.listen_host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(ClientStream(reader, writer))
        except Exception:
            # One connection's surprise must not reach the others (asyncio would only print it).
            log.exception(f"{self.route.name}: a connection failed")
            writer.transport.abort()
        finally:
            self._connections.discard(task)

    async def _serve(self, client: ClientStream) -> None:
        instance = self.route.pick(self._topology())
        upstream = await self._dial(instance) if instance is not None else None
        if upstream is None:
            log.info(f"{self.route.name}: {client.peer} reset: the name points at no live instance")
            client.refuse()
            return
        key: CancelKey | None = None
        try:
            packet = await asyncio.wait_for(self._startup(client), self.settings.startup_timeout_seconds)
            if packet.code == CANCEL_REQUEST:
                await self._cancel(packet, upstream)
                return
            upstream = await self._gate.connect(packet, client, upstream.instance, upstream)
            served = upstream.instance

            def remember(found: CancelKey) -> None:
                nonlocal key
                key = found
                self._cancels.add(found, served)

            await splice(client, upstream, remember)
        except GateRefused as refusal:
            client.write(m.error_response("FATAL", refusal.code, refusal.message, **refusal.fields))
            with contextlib.suppress(ConnectionError, OSError):
                await client.drain()
        except (
            ConnectionError,
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            ssl.SSLError,
            ProtocolViolation,
        ) as exc:
            log.debug(f"{self.route.name}: {client.peer} ended: {type(exc).__name__}: {exc}")
        finally:
            self._cancels.discard(key)
            upstream.close()
            client.close()

    async def _dial(self, instance: Instance) -> UpstreamStream | None:
        try:
            return await open_upstream(instance, self.settings.connect_timeout_seconds)
        except (OSError, TimeoutError):
            return None

    async def _startup(self, client: ClientStream) -> StartupPacket:
        """The client's packets up to a StartupMessage or CancelRequest, answering the requests for
        encryption on the way."""
        parser = StartupParser()
        while True:
            packet = parser.packet()
            if packet is None:
                data = await client.reader.read(8192)
                if not data:
                    raise ConnectionResetError("the client closed the connection during startup")
                parser.feed(data)
                continue
            if packet.code == SSL_REQUEST:
                if parser.take_raw():
                    # As PostgreSQL: bytes after SSLRequest before the handshake are an attack.
                    raise ProtocolViolation("received unencrypted data after SSL request")
                if client.tls or self._tls_context is None:
                    client.write(b"N")
                    continue
                await client.start_tls(self._tls_context, self.settings.startup_timeout_seconds)
                continue
            if packet.code == GSSENC_REQUEST:
                client.write(b"N")
                continue
            return packet

    async def _cancel(self, packet: StartupPacket, upstream: UpstreamStream) -> None:
        """Forward the CancelRequest to the instance of the session it names (the routed instance
        when no session here has that key: PostgreSQL ignores keys it does not know)."""
        assert packet.cancel_key is not None
        session = self._cancels.find(packet.cancel_key)
        if session is not None and session != upstream.instance:
            upstream.close()
            dialed = await self._dial(session)
            if dialed is None:
                return
            upstream = dialed
        try:
            upstream.writer.write(packet.raw)
            await upstream.writer.drain()
            # The server closes the connection once it has signalled the backend; so do we.
            await asyncio.wait_for(upstream.reader.read(), _CANCEL_ANSWER_SECONDS)
        finally:
            upstream.close()
