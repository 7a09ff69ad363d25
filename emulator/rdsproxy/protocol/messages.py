"""PostgreSQL protocol 3.0 framing, sans-I/O: bytes in, frames out, and builders for what we send.

Only what a proxy must understand is decoded; every other message travels as an opaque frame. Message
letters are decoded once, at the edge, into the two enums below: the rest of the proxy compares
`Frontend.QUERY`, never `b"Q"`.
"""

from __future__ import annotations

import struct
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    # mypyc's native 64-bit integer: compiled, arithmetic without int objects' checks; to Python
    # (and at run time: annotations are never evaluated) an int.
    from mypy_extensions import i64

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
# PostgreSQL's own limit for a startup packet (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000
# PostgreSQL's limit for any message (PQ_LARGE_MESSAGE_LIMIT is 1 GB - 1).
DEFAULT_MAX_MESSAGE: Final = 0x3FFFFFFF

_HEADER: Final = struct.Struct("!BI")
_INT32: Final = struct.Struct("!I")
_INT16 = struct.Struct("!H")


class Frontend:
    """What a client sends after the startup packet (the message's first byte).

    Plain int constants, not an IntEnum: mypyc compiles a comparison with one of these to one machine
    comparison, where an enum member is looked up on its class at every use (see kinds())."""

    QUERY: Final = 81  # Q
    PARSE: Final = 80  # P
    BIND: Final = 66  # B
    DESCRIBE: Final = 68  # D
    EXECUTE: Final = 69  # E
    CLOSE: Final = 67  # C
    SYNC: Final = 83  # S
    FLUSH: Final = 72  # H
    FUNCTION_CALL: Final = 70  # F
    COPY_DATA: Final = 100  # d
    COPY_DONE: Final = 99  # c
    COPY_FAIL: Final = 102  # f
    TERMINATE: Final = 88  # X
    # PasswordMessage, and the SASL initial and continuing responses.
    PASSWORD: Final = 112  # p


class Backend:
    """What a server sends (the message's first byte); plain ints, as Frontend's."""

    AUTHENTICATION: Final = 82  # R
    PARAMETER_STATUS: Final = 83  # S
    BACKEND_KEY_DATA: Final = 75  # K
    READY_FOR_QUERY: Final = 90  # Z
    ERROR_RESPONSE: Final = 69  # E
    NOTICE_RESPONSE: Final = 78  # N
    NOTIFICATION_RESPONSE: Final = 65  # A
    PARSE_COMPLETE: Final = 49  # 1
    BIND_COMPLETE: Final = 50  # 2
    CLOSE_COMPLETE: Final = 51  # 3
    COMMAND_COMPLETE: Final = 67  # C
    DATA_ROW: Final = 68  # D
    ROW_DESCRIPTION: Final = 84  # T
    NO_DATA: Final = 110  # n
    PARAMETER_DESCRIPTION: Final = 116  # t
    EMPTY_QUERY_RESPONSE: Final = 73  # I
    PORTAL_SUSPENDED: Final = 115  # s
    COPY_IN_RESPONSE: Final = 71  # G
    COPY_OUT_RESPONSE: Final = 72  # H
    COPY_BOTH_RESPONSE: Final = 87  # W
    COPY_DATA: Final = 100  # d
    COPY_DONE: Final = 99  # c
    FUNCTION_CALL_RESPONSE: Final = 86  # V
    NEGOTIATE_PROTOCOL_VERSION: Final = 118  # v


def kinds(of: type) -> dict[str, int]:
    """Frontend's or Backend's message kinds by name."""
    return {name: value for name, value in vars(of).items() if name.isupper() and isinstance(value, int)}


def kind_table(*members: int) -> bytes:
    """A set of message kinds as 256 flags: `table[kind]` is one byte read where `kind in a_set` hashes
    an int object (compiled code makes one per lookup)."""
    flags = bytearray(256)
    for member in members:
        flags[member] = 1
    return bytes(flags)


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a well-formed message; its connection must end."""


class Frame:
    """One message as it came off the wire; forwarding it needs no re-encoding."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    @property
    def kind(self) -> int:
        """The message letter, to compare with Frontend or Backend members."""
        return self.raw[0]

    @property
    def body(self) -> bytes:
        return self.raw[5:]


def _message_end(buf: bytes | bytearray, offset: int, limit: int) -> int:
    """Where the message starting at offset ends (its header checked), whether or not it is all there."""
    length: i64
    if isinstance(buf, bytes):
        # The big-endian length by hand: compiled, four byte reads cost less than a Struct call and
        # its tuple (indexing a bytearray is a generic call there, hence the split), and in native
        # integers less than in int objects.
        at: i64 = offset
        first: i64 = buf[at + 1]
        second: i64 = buf[at + 2]
        third: i64 = buf[at + 3]
        fourth: i64 = buf[at + 4]
        length = (first << 24) | (second << 16) | (third << 8) | fourth
    else:
        length = _INT32.unpack_from(buf, offset + 1)[0]
    if length < 4:
        raise ProtocolViolation(f"invalid message length {length}")
    if length > limit:
        raise ProtocolViolation(f"message of {length} bytes exceeds the {limit} byte limit")
    end: int = offset + 1 + length
    return end


class FrameReader:
    """Typed messages from a byte stream split or coalesced arbitrarily by TCP.

    A chunk that arrives with nothing buffered is read where it is, not copied into the buffer: its
    whole messages (nearly always all of it) are taken from it with one copy each, or none when a
    message came alone; only an incomplete tail is buffered."""

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        # Only while the buffer is empty: a chunk as it came, and where its untaken part starts.
        self._chunk: bytes | None = None
        self._at = 0
        self._max = max_message

    def feed(self, data: bytes) -> None:
        if self._buffer or self._chunk is not None:
            self._fold()
            self._buffer += data
        elif data:
            self._chunk = data
            self._at = 0

    def _fold(self) -> None:
        """The chunk's untaken part into the buffer."""
        chunk = self._chunk
        if chunk is not None:
            self._chunk = None
            self._buffer += chunk[self._at :] if self._at else chunk

    def buffered(self) -> int:
        """Bytes received and not yet taken as messages."""
        chunk = self._chunk
        return len(self._buffer) + (len(chunk) - self._at if chunk is not None else 0)

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def frames(self) -> Generator[Frame, None, None]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def next_frame(self) -> Frame | None:
        """The next complete message, taken (a consumer that stops after it never sees it again);
        None while none is complete."""
        chunk = self._chunk
        if chunk is not None:
            at = self._at
            size = len(chunk)
            if size - at >= 5:
                end = _message_end(chunk, at, self._max)
                if end <= size:
                    if end == size:
                        self._chunk = None
                    else:
                        self._at = end
                    return Frame(chunk if at == 0 and end == size else chunk[at:end])
            self._fold()  # the start of a message still coming
            return None
        buf = self._buffer
        if len(buf) < 5:
            return None
        end = _message_end(buf, 0, self._max)
        if len(buf) < end:
            return None
        if end == len(buf):  # the last one: one copy, not a slice's two
            raw = bytes(buf)
            buf.clear()
        else:
            raw = bytes(buf[:end])
            del buf[:end]  # deleting from a bytearray's front only moves its start
        return Frame(raw)

    def take_complete(self) -> tuple[bytes, list[int]]:
        """Every complete message buffered, as one chunk, and where each one starts in it.

        For forwarding in bulk: no object per message, and the caller looks only at the messages it
        must; no copy at all when they came in one read with nothing before them.
        """
        if self._chunk is not None and self._at:
            self._fold()
        chunk = self._chunk
        if chunk is not None:
            self._chunk = None
            starts, offset = self._starts(chunk)
            if offset == len(chunk):
                return chunk, starts
            self._buffer += chunk[offset:]  # part of a message still coming
            return (chunk[:offset] if starts else b""), starts
        buf = self._buffer
        starts, offset = self._starts(buf)
        if not starts:
            return b"", starts
        whole = bytes(buf) if offset == len(buf) else bytes(buf[:offset])
        del buf[:offset]
        return whole, starts

    def _starts(self, data: bytes | bytearray) -> tuple[list[int], int]:
        """Where each complete message in data starts, and where the complete ones end."""
        size = len(data)
        starts = []
        offset = 0
        limit = self._max
        while size - offset >= 5:
            end = _message_end(data, offset, limit)
            if size < end:
                break
            starts.append(offset)
            offset = end
        return starts, offset

    def pending_bytes(self) -> int:
        return self.buffered()

    def take_raw(self) -> bytes:
        """Whatever is buffered, undecoded (used when a stream switches to TLS)."""
        self._fold()
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


@dataclass(frozen=True)
class StartupPacket:
    code: int
    params: dict[str, str] = field(default_factory=dict)
    # CancelRequest's process id and secret key
    cancel_key: tuple[int, int] | None = None


class StartupReader:
    """The untyped first packet(s): SSLRequest, GSSENCRequest, CancelRequest or StartupMessage."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def packet(self) -> StartupPacket | None:
        buf = self._buffer
        if len(buf) < 8:
            return None
        (length,) = _INT32.unpack_from(buf, 0)
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolViolation(f"invalid startup packet length {length}")
        if len(buf) < length:
            return None
        body = bytes(buf[4:length])
        del buf[:length]
        (code,) = _INT32.unpack_from(body, 0)
        if code == CANCEL_REQUEST:
            if len(body) != 12:
                raise ProtocolViolation("invalid cancel request length")
            pid, key = struct.unpack_from("!II", body, 4)
            return StartupPacket(code, cancel_key=(pid, key))
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            return StartupPacket(code)
        return StartupPacket(code, _parse_startup_params(body[4:]) if code >> 16 == 3 else {})

    def take_raw(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def _parse_startup_params(data: bytes) -> dict[str, str]:
    parts = data.split(b"\0")
    # name\0value\0 ... \0 : an even number of strings, then the terminating empty one.
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"" or len(parts) % 2 != 0:
        raise ProtocolViolation("malformed startup packet")
    strings = parts[:-2]
    try:
        decoded = [s.decode() for s in strings]
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("startup packet is not valid UTF-8") from exc
    return dict(zip(decoded[0::2], decoded[1::2], strict=True))


# -- reading message bodies ------------------------------------------------------------------


# Where read_cstring looks for a string's end by partition (names are at most 63 bytes in PostgreSQL).
_NAME_WINDOW: Final = 128


def read_cstring(body: bytes, offset: int = 0) -> tuple[str, int]:
    """The string at body[offset:] and the offset after its terminator."""
    if offset < len(body) and body[offset] == 0:
        return "", offset + 1  # the unnamed statement or portal, as most names in the protocol are
    # partition, a one-argument method, where it can: find parses its arguments the slow way, which
    # costs more than finding the end of the protocol's short strings. The window keeps a large
    # message from being copied to read a name at its start.
    if offset == 0:
        text, found, _ = body.partition(b"\0")
    else:
        text, found, _ = body[offset : offset + _NAME_WINDOW].partition(b"\0")
        if not found:  # longer than the window (or unterminated)
            end = body.find(b"\0", offset)
            if end >= 0:
                return body[offset:end].decode("utf-8", "replace"), end + 1
    if not found:
        raise ProtocolViolation("unterminated string")
    return text.decode("utf-8", "replace"), offset + len(text) + 1


def read_parameter_status(data: bytes, start: int = 0) -> tuple[str, str]:
    """(name, value) of the ParameterStatus message that starts at data[start]."""
    name, offset = read_cstring(data, start + 5)
    return name, read_cstring(data, offset)[0]


def parse_message_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields by code letter (S, C, M, ...)."""
    fields: dict[str, str] = {}
    offset = 0
    while offset < len(body) and body[offset] != 0:
        code = chr(body[offset])
        value, offset = read_cstring(body, offset + 1)
        fields[code] = value
    return fields


def parse_parse(body: bytes) -> tuple[str, str, bytes]:
    """Parse: (statement name, query text, raw parameter type section)."""
    name, offset = read_cstring(body)
    query, offset = read_cstring(body, offset)
    return name, query, body[offset:]


# Drivers send the same Parse messages again and again (the extended protocol parses its unnamed
# statement before every execution): their fields, kept for short ones (at most _PARSED_MAX of them,
# up to _PARSED_BYTES each: about a megabyte at most).
_PARSED: Final[dict[bytes, tuple[str, str, bytes]]] = {}
_PARSED_MAX: Final = 2048
_PARSED_BYTES: Final = 256


def parse_fields(frame: Frame) -> tuple[str, str, bytes]:
    """parse_parse() of a Parse message, without decoding again a message seen before."""
    raw = frame.raw
    known = _PARSED.get(raw)
    if known is not None:
        return known
    fields = parse_parse(raw[5:])
    if len(raw) <= _PARSED_BYTES:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[raw] = fields
    return fields


def bind_statement(body: bytes) -> tuple[str, str, int, int]:
    """Bind: (portal, statement name, offset where the name begins, offset where the rest begins)."""
    portal, start = read_cstring(body)
    statement, rest = read_cstring(body, start)
    return portal, statement, start, rest


def parse_target(body: bytes) -> tuple[str, str]:
    """Describe / Close: (kind 'S' or 'P', name)."""
    if not body:
        raise ProtocolViolation("empty Describe/Close")
    name, _ = read_cstring(body, 1)
    return chr(body[0]), name


def data_row_values(body: bytes) -> list[str | None]:
    """A DataRow's columns as text (None for NULL)."""
    (count,) = _INT16.unpack_from(body, 0)
    offset = 2
    values: list[str | None] = []
    for _ in range(count):
        (length,) = struct.unpack_from("!i", body, offset)
        offset += 4
        if length < 0:
            values.append(None)
            continue
        values.append(body[offset : offset + length].decode("utf-8", errors="replace"))
        offset += length
    return values


def function_call(body: bytes) -> tuple[int, int]:
    """FunctionCall: (the function's OID, how many arguments)."""
    try:
        (oid,) = _INT32.unpack_from(body, 0)
        (formats,) = _INT16.unpack_from(body, 4)
        (arguments,) = _INT16.unpack_from(body, 6 + 2 * formats)
    except struct.error as exc:
        raise ProtocolViolation("malformed FunctionCall message") from exc
    return int(oid), int(arguments)


def query_text(body: bytes) -> str:
    return read_cstring(body)[0]


# -- building messages -------------------------------------------------------------------------


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def frame(kind: int, body: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(body) + 4) + body


def error_response(severity: str, code: str, message: str, **extra: str) -> bytes:
    """ErrorResponse; extra fields by code letter, e.g. D="detail"."""
    body = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(code) + b"M" + _cstr(message)
    for letter, value in extra.items():
        body += letter.encode() + _cstr(value)
    return frame(Backend.ERROR_RESPONSE, body + b"\0")


def notice_response(code: str, message: str) -> bytes:
    body = b"S" + _cstr("NOTICE") + b"V" + _cstr("NOTICE") + b"C" + _cstr(code) + b"M" + _cstr(message)
    return frame(Backend.NOTICE_RESPONSE, body + b"\0")


def error_from_fields(fields: dict[str, str]) -> bytes:
    """An ErrorResponse with these fields, in their order."""
    body = b"".join([code.encode() + _cstr(value) for code, value in fields.items()])
    return frame(Backend.ERROR_RESPONSE, body + b"\0")


def rename_in_error(raw: bytes, old: str, new: str) -> bytes:
    """An ErrorResponse frame with the quoted name "old" written "new" in its message and detail."""
    quoted = f'"{old}"'.encode()
    if quoted not in raw:
        return raw
    body = raw[5:]
    out = bytearray()
    offset = 0
    while offset < len(body) and body[offset] != 0:
        code = body[offset : offset + 1]
        end = body.index(b"\0", offset + 1)
        value = body[offset + 1 : end]
        if code in (b"M", b"D"):
            value = value.replace(quoted, f'"{new}"'.encode())
        out += code + value + b"\0"
        offset = end + 1
    return frame(Backend.ERROR_RESPONSE, bytes(out) + b"\0")


def authentication(code: int, payload: bytes = b"") -> bytes:
    return frame(Backend.AUTHENTICATION, _INT32.pack(code) + payload)


AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def auth_sasl(mechanisms: list[str]) -> bytes:
    return authentication(AUTH_SASL, b"".join([_cstr(m) for m in mechanisms]) + b"\0")


def parameter_status(name: str, value: str) -> bytes:
    return frame(Backend.PARAMETER_STATUS, _cstr(name) + _cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return frame(Backend.BACKEND_KEY_DATA, struct.pack("!II", pid, key))


def ready_for_query(status: bytes) -> bytes:
    return frame(Backend.READY_FOR_QUERY, status)


def simple_query(text: str) -> bytes:
    return frame(Frontend.QUERY, _cstr(text))


def password_message(secret: bytes | str) -> bytes:
    data = secret.encode() if isinstance(secret, str) else secret
    return frame(Frontend.PASSWORD, data + b"\0")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(Frontend.PASSWORD, _cstr(mechanism) + _INT32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return frame(Frontend.PASSWORD, data)


def startup_message(params: dict[str, str]) -> bytes:
    body = _INT32.pack(PROTOCOL_3_0) + b"".join([_cstr(k) + _cstr(v) for k, v in params.items()]) + b"\0"
    return _INT32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST)


def parse_message(name: str, query: str, param_section: bytes) -> bytes:
    return frame(Frontend.PARSE, _cstr(name) + _cstr(query) + param_section)


def rename_bind(body: bytes, statement: str, start: int, rest: int) -> bytes:
    """The Bind whose body is body, with statement for the name at body[start:rest] (bind_statement's
    offsets: the body is read once)."""
    return bind_message(body[:start] + _cstr(statement), body[rest:])


_BIND: Final = bytes((Frontend.BIND,))


def bind_message(start: bytes, rest: bytes) -> bytes:
    """A Bind whose body is start (its portal and statement, terminated) then rest."""
    # Concatenated: compiled, fewer generic calls than a Struct's pack and a join (the one copy of
    # rest, the large part, is the same).
    return _BIND + (len(start) + len(rest) + 4).to_bytes(4, "big") + start + rest


def target_message(kind: int, target: str, name: str) -> bytes:
    return frame(kind, target.encode() + _cstr(name))


TERMINATE: Final = frame(Frontend.TERMINATE)
SYNC: Final = frame(Frontend.SYNC)
FLUSH: Final = frame(Frontend.FLUSH)


def parse_sasl_initial(body: bytes) -> tuple[str, bytes]:
    """SASLInitialResponse: (mechanism, client-first message), checked as PostgreSQL checks it."""
    mechanism, offset = read_cstring(body)
    if len(body) < offset + 4:
        raise ProtocolViolation("insufficient data left in message")
    (length,) = struct.unpack_from("!i", body, offset)
    offset += 4
    if length == -1:
        data = b""
    elif length < 0 or offset + length > len(body):
        raise ProtocolViolation("insufficient data left in message")
    else:
        data = body[offset : offset + length]
        offset += length
    if offset != len(body):
        raise ProtocolViolation("invalid message format")
    return mechanism, data


def auth_code(body: bytes) -> int:
    return int(_INT32.unpack_from(body, 0)[0])
