"""A client connection's bytes, as the event loop delivers them, and its writes.

During login they are awaited (read_more); once the session serves the client, every chunk goes
straight to the session from the event loop's callback: no task woken per request, no stream
buffer in between. The database side does the same (dbconn._BackendProtocol). The protocol is also
the connection's writer (write, drain, start_tls, close: what the session and login use of asyncio's
StreamWriter): no StreamReader, StreamWriter and their futures per client, about 2 kB of each idle
client's memory.

TLS is done here too, in memory (memorytls), rather than by the event loop's start_tls."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from emulator.rdsproxy.memorytls import MemoryTls, settle

Sink = Callable[[bytes], None]
Lost = Callable[[BaseException | None], None]
Connected = Callable[["ClientProtocol"], Coroutine[Any, Any, None]]


class ClientProtocol(asyncio.Protocol):
    def __init__(self, connected: Connected, loop: asyncio.AbstractEventLoop) -> None:
        self._connected: Connected | None = connected
        self._loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment] # set by connection_made
        self._task: asyncio.Task[None] | None = None
        self._pending = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self.at_eof = False
        self._sink: Sink | None = None
        self._lost: Lost | None = None
        # TLS, once the client asked for it (start_tls).
        self._tls: MemoryTls | None = None
        # Flow control: the transport's buffer is full (pause_writing) until resume_writing.
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._connection_lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # a stream transport (TCP)
        connected, self._connected = self._connected, None
        if connected is not None:
            self._task = self._loop.create_task(connected(self))
            self._task.add_done_callback(self._session_ended)

    def _session_ended(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # As asyncio's streams: never silent, and the connection does not stay open.
            self._loop.call_exception_handler(
                {"message": "Unhandled exception in a client session", "exception": exc, "protocol": self}
            )
            self.transport.close()

    # -- from the event loop ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls_received(data)
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(data)
            return
        self._pending += data
        self._wake()

    def eof_received(self) -> bool:
        # As asyncio's streams: a plain socket stays open for writing (the session's last words, a
        # FATAL or a login step already under way, still go out; the session closes it). TLS cannot.
        self._ended(None)
        return self._tls is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection_lost = True
        self._wake_drain(exc)
        self._ended(exc)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain(None)

    def _wake_drain(self, exc: Exception | None) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        settle(waiter, exc)

    def _ended(self, exc: BaseException | None) -> None:
        self.at_eof = True
        self._wake()
        if self._tls is not None:
            self._tls.abandon(exc or ConnectionResetError("the client closed the connection during TLS"))
        lost, self._lost = self._lost, None
        if lost is not None:
            lost(exc)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- TLS -------------------------------------------------------------------------------------------

    def _tls_received(self, data: bytes) -> None:
        """Ciphertext from the client: the handshake's next step, then whatever it decrypts to."""
        tls = self._tls
        assert tls is not None
        try:
            plain = tls.receive(data)
        except ssl.SSLError:
            # A failed handshake (start_tls raises it), or bytes that are not TLS: the alert goes out
            # and the connection ends.
            self._tls_flush()
            self.transport.close()
            return
        self._tls_flush()  # handshake messages, session tickets, alerts
        if plain:
            self._deliver(plain)
        if tls.closed:
            self._ended(None)

    def _tls_flush(self) -> None:
        tls = self._tls
        assert tls is not None
        if not self.transport.is_closing():
            outgoing = tls.outgoing()
            if outgoing:
                self.transport.write(outgoing)

    # -- login: awaited reads -----------------------------------------------------------------------

    async def read_more(self) -> bytes:
        """What the client sent since the last call, waiting for something; b"" once it is gone."""
        while not self._pending and not self.at_eof:
            self._waiter = self._loop.create_future()
            await self._waiter
        return self.take_pending()

    def take_pending(self) -> bytes:
        data = bytes(self._pending)
        self._pending.clear()
        return data

    # -- the session: callbacks ---------------------------------------------------------------------

    def attach(self, sink: Sink, lost: Lost) -> None:
        """From now on every chunk goes to sink as it arrives, and the end of the connection to lost
        (called once). Bytes that came before are the caller's to take (take_pending)."""
        self._sink = sink
        self._lost = lost

    def detach(self) -> None:
        """Nothing more is delivered: the session is over."""
        self._sink = _ignore
        self._lost = None

    # -- writing (StreamWriter's part) ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        tls = self._tls
        if tls is None:
            self.transport.write(data)
            return
        try:
            records = tls.encrypt(data)
        except ssl.SSLError:
            # The TLS session is over (the proxy's close_notify went out): what is written now is
            # lost, as it is on a closed transport, and never an error in the writer's path.
            return
        if not self.transport.is_closing():
            self.transport.write(records)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def backed_up(self, limit: int) -> bool:
        """More than limit bytes wait to be sent to the client. The transport is asked only once it
        has paused this protocol's writing (its high-water mark, 64 kB, is below every limit used)."""
        return self._writing_paused and self.transport.get_write_buffer_size() > limit

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def close(self) -> None:
        tls = self._tls
        if tls is not None and tls.handshake is None and not self.transport.is_closing():
            # close_notify first, as the loop's TLS transport does (clients wait for it).
            last = tls.close_notify()
            if last:
                self.transport.write(last)
        self.transport.close()

    async def drain(self) -> None:
        """Until the transport's buffer is below its high-water mark (as StreamWriter.drain)."""
        if self._connection_lost or self.transport.is_closing():
            # Let the loop run connection_lost; then the write is known to be lost.
            await asyncio.sleep(0)
            if self._connection_lost:
                raise ConnectionResetError("Connection lost")
        if not self._writing_paused:
            return
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self._loop.create_future()
        await waiter

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Upgrade the connection to TLS as the server (after the client's SSLRequest was answered)."""
        tls = self._tls = MemoryTls(context, server_side=True)
        handshake = tls.handshake
        assert handshake is not None
        await self.drain()
        early = self.take_pending()  # a ClientHello that came while the "S" was being written
        if early:
            self._tls_received(early)
        if self.at_eof:  # the client had closed its end already: no handshake will come
            tls.abandon(ConnectionResetError("the client closed the connection before TLS"))
        await handshake


def _ignore(data: bytes) -> None:
    pass
