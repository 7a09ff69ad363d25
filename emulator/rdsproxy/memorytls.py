"""TLS run in memory: OpenSSL's end of a connection between two memory BIOs, fed and drained by the
protocol that owns the socket. The proxy's two sides use it: the client's connection, where the
proxy is the server (client.py), and the database's, where it is the client (dbconn.py).

The event loop's own TLS (start_tls) puts a protocol of its own between the transport and the
application: per connection, its objects and a touched read buffer (about 6 kB of each idle TLS
client); per chunk, a call each way, ssl.py's Python frames, and an SSLWantReadError raised and
caught. Here a chunk is decrypted in one call, into one shared buffer, by OpenSSL's C object.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

# Decrypted bytes are read into this one buffer, then copied out at their size (the event loop runs
# one callback at a time): no 64 kB allocation per read.
_BUFFER = bytearray(1 << 16)
_VIEW = memoryview(_BUFFER)


def settle(future: asyncio.Future[None] | None, exc: BaseException | None) -> None:
    """Wake whoever awaits the future (if still waiting): with exc raised, or not. (The handshake's
    here; the client protocol's drain waiter too.)"""
    if future is None or future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


class MemoryTls:
    """One end of a TLS session: ciphertext in (receive), plaintext out; plaintext in (encrypt),
    ciphertext out. What the peer must get next (handshake messages, alerts, tickets, records) waits
    in outgoing() until the owner writes it to the socket."""

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        # What the per-chunk calls go to: the C object under ssl.SSLObject, which only wraps its
        # methods in Python frames (a tenth of the TLS work per transaction); the wrapper itself
        # where an interpreter has no such attribute. Same methods, same exceptions.
        self._engine: Any = getattr(self.ssl, "_sslobj", self.ssl)
        self.handshaking = True
        # Done when the handshake is (with its SSLError when it fails); None once it has been
        # (nothing kept per idle connection).
        self.handshake: asyncio.Future[None] | None = asyncio.get_running_loop().create_future()
        # The peer's close_notify came: nothing more will be decrypted.
        self.closed = False

    def start(self) -> bytes:
        """The client's first flight (ClientHello): what to send to begin the handshake."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.ssl.do_handshake()
        return self.outgoing()

    def receive(self, data: bytes) -> bytes:
        """Ciphertext from the peer: the next handshake step, then the plaintext it completes (b""
        while a record is still partial). ssl.SSLError when the handshake fails or the bytes are not
        TLS: the alert for the peer is then in outgoing()."""
        incoming, tls = self._incoming, self._engine
        incoming.write(data)
        if self.handshaking:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            except ssl.SSLError as exc:
                self.abandon(exc)
                raise
            self.handshaking = False
            self.abandon(None)
        plain: list[bytes] = []
        buffer, view = _BUFFER, _VIEW
        read = tls.read
        try:
            while True:
                count: int = read(len(buffer), buffer)  # into a buffer, read returns the count
                if not count:
                    # The peer's close_notify: into a buffer, read returns 0 for it rather than raise
                    # SSLZeroReturnError.
                    self.closed = True
                    break
                plain.append(bytes(view[:count]))
                if not incoming.pending and not tls.pending():
                    break  # all decrypted: no SSLWantReadError to raise and catch per chunk
        except ssl.SSLWantReadError:
            pass  # the rest of a record is still on its way (or a ticket carried no data)
        except ssl.SSLZeroReturnError:
            self.closed = True
        if len(plain) == 1:
            return plain[0]
        return b"".join(plain)

    def abandon(self, exc: BaseException | None) -> None:
        """The handshake is over: done (None), or failed with exc (the connection ended first)."""
        future, self.handshake = self.handshake, None
        settle(future, exc)

    def outgoing(self) -> bytes:
        """Ciphertext waiting to go to the peer (b"" for none)."""
        outgoing = self._outgoing
        return outgoing.read() if outgoing.pending else b""

    def encrypt(self, data: bytes) -> bytes:
        """data as records for the peer, with anything else waiting to go before it. ssl.SSLError
        once the session is over (a close_notify went out)."""
        self._engine.write(data)
        return self._outgoing.read()

    def close_notify(self) -> bytes:
        """The proxy's close_notify (and anything waiting before it): the session's last bytes."""
        with contextlib.suppress(ssl.SSLError):
            self.ssl.unwrap()
        return self.outgoing()


class TlsTransport(asyncio.Transport):
    """A TCP transport with TLS in memory between it and its writers: what start_tls would return
    (a database connection writes to it as to its TCP transport). Reads are the protocol's: it feeds
    the ciphertext to tls and passes on the plaintext."""

    def __init__(self, raw: asyncio.Transport, tls: MemoryTls) -> None:
        super().__init__()
        self._raw = raw
        self._tls = tls

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raw = self._raw
        if raw.is_closing():
            return  # as a closed TCP transport: the write is lost, not raised
        try:
            records = self._tls.encrypt(bytes(data))
        except ssl.SSLError:
            return  # the session is over (the close_notify went out): the same
        raw.write(records)

    def close(self) -> None:
        raw = self._raw
        if not raw.is_closing():
            last = self._tls.close_notify()
            if last:
                raw.write(last)
        raw.close()

    def abort(self) -> None:
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls.ssl
        return self._raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)
