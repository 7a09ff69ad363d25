"""One database connection's server session as the proxy knows it, and its answers on their way to
the client.

ServerState is what the proxy learned from what it forwarded and what the server said: the answers
still due (the router), the transaction status, the parameters the server reported, the statements
prepared there. A database connection is lent only when its state is clean: nothing due, no
request without its Sync, outside a transaction. relay() turns the server's bytes into the bytes
the borrowing client must see: matched to its requests by the router, with ParameterStatus
messages it has already seen left out.
"""

from __future__ import annotations

from typing import Final

from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend
from emulator.rdsproxy.protocol.parameters import UNREPORTED, Key, SessionParameters
from emulator.rdsproxy.protocol.routing import ResponseRouter

IDLE: Final = b"I"
# ReadyForQuery's status inside a transaction that failed: commands are refused until its end.
FAILED: Final = b"E"


class ServerState:
    __slots__ = (
        "aligned",
        "copy_in",
        "ended_by_fatal",
        "fatal",
        "fatal_reason",
        "params",
        "router",
        "statements",
        "txn_status",
        "unnamed",
        "unreported",
    )

    def __init__(self) -> None:
        self.router = ResponseRouter()
        # The status byte of the last ReadyForQuery: I idle, T in a transaction, E in a failed one.
        self.txn_status = IDLE
        # What the server reported with ParameterStatus.
        self.params: dict[str, str] = {}
        # Parameters the server does not report (extra_float_digits): what the proxy last set.
        self.unreported: dict[str, str] = {UNREPORTED: "1"}
        # The session parameters last found equal to a borrower's (None when they may have changed):
        # the next borrower with the same ones needs no comparison.
        self.aligned: Key | None = None
        # Backend names of the prepared statements the server session holds.
        self.statements: set[str] = set()
        # Whose statement the server's unnamed statement is (the client's own object), if anyone's.
        self.unnamed: object | None = None
        # In COPY FROM STDIN: every client message goes to the server as it is (PostgreSQL fails the
        # COPY, and the session, on anything but COPY data).
        self.copy_in = False
        # The server ended the session with a FATAL the client caused (a protocol violation): the
        # client's own session ends the same way.
        self.ended_by_fatal = False
        # The server sent a FATAL that is not the client's doing (it is ending the session: a
        # shutdown, a terminated backend). It is not forwarded: a client must not see a FATAL and
        # keep its connection (drivers take a FATAL as the end), so the proxy tells it when the
        # connection closes, as for any lost connection (failover_error_severity). fatal_reason:
        # its SQLSTATE and message, for the proxy's error's detail.
        self.fatal = False
        self.fatal_reason = ""

    @property
    def clean(self) -> bool:
        """Idle outside a transaction, nothing due, no request without its Sync: fit to lend."""
        return self.txn_status == IDLE and self.router.settled

    def reported(self, name: str, value: str) -> None:
        self.params[name] = value
        self.aligned = None


def relay(
    frames: m.FrameReader, router: ResponseRouter, server: ServerState, parameters: SessionParameters
) -> list[bytes]:
    """What the client gets from the complete messages in frames (one write's worth)."""
    out: list[bytes] = []
    if router.passthrough():
        # Everything complete goes in bulk; what is left is part of a message still coming.
        chunk, starts = frames.take_complete()
        if starts:
            _pass_through(chunk, starts, out, router=router, server=server, parameters=parameters)
    else:
        _route_each(frames, router, server, parameters, out)
    return out


def _route_each(
    frames: m.FrameReader,
    router: ResponseRouter,
    server: ServerState,
    parameters: SessionParameters,
    out: list[bytes],
) -> None:
    """Server messages one by one, for requests whose answers the proxy must match or hide. Those
    that go to the client as they are go as runs cut from one chunk: no copy and no object each."""
    chunk, starts = frames.take_complete()
    size = len(chunk)
    last = len(starts) - 1
    kept = 0  # where the run of messages going out unchanged starts
    for index, start in enumerate(starts):
        end = starts[index + 1] if index < last else size
        kind = chunk[start]
        instead: list[bytes] | None
        if kind == Backend.PARAMETER_STATUS:
            if _new_to_client(chunk, start, server, parameters, router):
                continue
            instead = []
        else:
            if kind == Backend.READY_FOR_QUERY:
                server.txn_status = chunk[start + 5 : start + 6]
            if _WATCHED[kind] and _watch(kind, chunk, start, server):
                instead = []  # the server's own FATAL: held back (see ServerState.fatal)
            else:
                instead = router.passes(kind, chunk, start, end)
                if instead is None:
                    continue
        if start > kept:
            out.append(chunk[kept:start])
        out += instead
        kept = end
    if kept < size:
        out.append(chunk[kept:] if kept else chunk)


def _pass_through(
    chunk: bytes,
    starts: list[int],
    out: list[bytes],
    *,
    router: ResponseRouter,
    server: ServerState,
    parameters: SessionParameters,
) -> None:
    """A run of server messages in bulk (see ResponseRouter.passthrough): only ParameterStatus and
    ReadyForQuery are looked at, as the per-message path does."""
    kept = 0
    for index, start in enumerate(starts):
        kind = chunk[start]
        if kind == Backend.PARAMETER_STATUS:
            if not _new_to_client(chunk, start, server, parameters, router):
                out.append(chunk[kept:start])
                kept = starts[index + 1] if index + 1 < len(starts) else len(chunk)
        elif kind == Backend.READY_FOR_QUERY:
            server.txn_status = chunk[start + 5 : start + 6]
            router.ready()
        elif _WATCHED[kind] and _watch(kind, chunk, start, server):
            # The server's own FATAL: held back (see ServerState.fatal).
            out.append(chunk[kept:start])
            kept = starts[index + 1] if index + 1 < len(starts) else len(chunk)
    out.append(chunk[kept:] if kept else chunk)


_COPY_IN_KINDS: Final = (Backend.COPY_IN_RESPONSE, Backend.COPY_BOTH_RESPONSE)
_COPY_IN: Final = m.kind_table(*_COPY_IN_KINDS)
# COPY FROM STDIN ends with the client's CopyDone or CopyFail (see the session), or a server error.
_WATCHED: Final = m.kind_table(*_COPY_IN_KINDS, Backend.ERROR_RESPONSE)
# The client's own protocol violation, which ends its session: PostgreSQL's FATAL 08P01.
_CLIENTS_FATAL: Final = (b"VFATAL\0", b"C08P01\0")
_FATAL: Final = _CLIENTS_FATAL[0]


def _watch(kind: int, data: bytes, start: int, server: ServerState) -> bool:
    """COPY FROM STDIN starting, or failed by the server, and a FATAL of the client's making; True
    for a FATAL that is not the client's (held back from the client)."""
    if _COPY_IN[kind]:
        server.copy_in = True
        return False
    server.copy_in = False
    length = int.from_bytes(data[start + 1 : start + 5], "big")
    message = data[start : start + 1 + length]
    if _FATAL not in message:
        return False
    server.fatal = True
    if _CLIENTS_FATAL[1] in message:
        server.ended_by_fatal = True
        return False
    fields = m.parse_message_fields(message[5:])
    server.fatal_reason = f"{fields.get('M', '')} (SQLSTATE {fields.get('C', 'XX000')})"
    return True


def _new_to_client(
    data: bytes, start: int, server: ServerState, parameters: SessionParameters, router: ResponseRouter
) -> bool:
    """The ParameterStatus at data[start:], remembered; True when the client has not seen it."""
    name, value = m.read_parameter_status(data, start)
    server.reported(name, value)
    if router.holding_parameters:
        return False
    return parameters.reported(name, value)
