"""A client connection's bytes, as the event loop delivers them.

During login they are awaited (read_more); once the session serves the client, every chunk goes
straight to the session from the event loop's callback: no task woken per request, no stream
buffer in between. The database side does the same (dbconn._BackendProtocol). Writes, TLS and flow
control stay those of asyncio's streams (StreamWriter.write, start_tls, drain).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Sink = Callable[[bytes], None]
Lost = Callable[[BaseException | None], None]


class ClientProtocol(asyncio.StreamReaderProtocol):
    def __init__(
        self,
        connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(asyncio.StreamReader(loop=loop), connected, loop=loop)
        self._loop = loop
        self._pending = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self.at_eof = False
        self._sink: Sink | None = None
        self._lost: Lost | None = None

    # -- from the event loop ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(data)
            return
        self._pending += data
        self._wake()

    def eof_received(self) -> bool:
        # As asyncio's streams: a plain socket stays open for writing (the session's last words, a
        # FATAL or a login step already under way, still go out; the session closes it).
        keep_open = bool(super().eof_received())
        self._ended(None)
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # wakes whoever waits in StreamWriter.drain()
        self._ended(exc)

    def _ended(self, exc: BaseException | None) -> None:
        self.at_eof = True
        self._wake()
        lost, self._lost = self._lost, None
        if lost is not None:
            lost(exc)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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


def _ignore(data: bytes) -> None:
    pass
