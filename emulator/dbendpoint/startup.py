"""The startup phase's bytes, sans I/O: the client's untyped first packets, and the server's
BackendKeyData (the key a later CancelRequest names).

Parsing is the proxy's (emulator.rdsproxy.protocol.messages); this keeps each packet's raw bytes too,
because the endpoint forwards them unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from emulator.rdsproxy.protocol import messages as m

SSL_REQUEST = m.SSL_REQUEST
GSSENC_REQUEST = m.GSSENC_REQUEST
CANCEL_REQUEST = m.CANCEL_REQUEST
ProtocolViolation = m.ProtocolViolation

# A cancel key: the backend's process id and its secret key's bytes.
CancelKey = tuple[int, bytes]

_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")


@dataclass(frozen=True)
class StartupPacket:
    """One untyped packet of the startup phase, as the client sent it."""

    raw: bytes
    code: int
    # StartupMessage parameters (user, database, options, ...); empty for the other packets.
    params: dict[str, str] = field(default_factory=dict)
    # CancelRequest's (process id, secret key).
    cancel_key: CancelKey | None = None

    @property
    def user(self) -> str | None:
        return self.params.get("user")

    @property
    def database(self) -> str | None:
        # PostgreSQL's default: the user name.
        return self.params.get("database") or self.params.get("user")


class StartupParser:
    """Feed the client's bytes; packet() returns each whole packet, or None until one is complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def packet(self) -> StartupPacket | None:
        if len(self._buffer) < 4:
            return None
        (length,) = _INT32.unpack_from(self._buffer, 0)
        if length < 8 or length > m.MAX_STARTUP_PACKET:
            raise ProtocolViolation(f"invalid length of startup packet ({length})")
        if len(self._buffer) < length:
            return None
        raw = bytes(self._buffer[:length])
        del self._buffer[:length]
        reader = m.StartupReader()
        reader.feed(raw)
        parsed = reader.packet()
        assert parsed is not None  # a whole packet was fed
        key = None
        if parsed.cancel_key is not None:
            pid, secret = parsed.cancel_key
            key = (pid, secret.to_bytes(4, "big"))
        return StartupPacket(raw, parsed.code, parsed.params, key)

    def take_raw(self) -> bytes:
        """Bytes buffered after the last packet (there must be none before a TLS handshake)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


# The server's messages before the session is ready are small; a longer stretch means the scan is lost.
_WATCH_LIMIT = 1 << 20


class BackendKeyWatcher:
    """Scans what the server sends first, up to its first ReadyForQuery, for BackendKeyData."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._seen = 0
        self.key: CancelKey | None = None
        self.done = False

    def feed(self, data: bytes) -> CancelKey | None:
        """The key when this data completes BackendKeyData, else None."""
        if self.done:
            return None
        self._buffer += data
        self._seen += len(data)
        while len(self._buffer) >= 5:
            kind = self._buffer[0]
            (length,) = _INT32.unpack_from(self._buffer, 1)
            if length < 4:
                self.done = True
                return None
            if len(self._buffer) < 1 + length:
                break
            body = bytes(self._buffer[5 : 1 + length])
            del self._buffer[: 1 + length]
            if kind == m.Backend.BACKEND_KEY_DATA and len(body) >= 8:
                (pid,) = _UINT32.unpack_from(body, 0)
                self.key = (pid, body[4:])
                self._stop()
                return self.key
            if kind in (m.Backend.READY_FOR_QUERY, m.Backend.ERROR_RESPONSE):
                self._stop()
                return None
        if self._seen > _WATCH_LIMIT:
            self._stop()
        return None

    def _stop(self) -> None:
        self.done = True
        self._buffer.clear()
