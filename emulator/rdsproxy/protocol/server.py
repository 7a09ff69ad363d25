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

from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend
from emulator.rdsproxy.protocol.parameters import UNREPORTED, Key, SessionParameters
from emulator.rdsproxy.protocol.routing import ResponseRouter

IDLE = b"I"


class ServerState:
    __slots__ = ("aligned", "params", "router", "statements", "txn_status", "unnamed", "unreported")

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
    """Server messages one by one, for requests whose answers the proxy must match or hide."""
    for frame in frames.frames():
        raw = frame.raw
        kind = raw[0]
        if kind == Backend.PARAMETER_STATUS:
            if _new_to_client(raw, 0, server, parameters):
                out.append(raw)
            continue
        if kind == Backend.READY_FOR_QUERY:
            server.txn_status = raw[5:6]
        out += router.route(kind, raw)


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
            if not _new_to_client(chunk, start, server, parameters):
                out.append(chunk[kept:start])
                kept = starts[index + 1] if index + 1 < len(starts) else len(chunk)
        elif kind == Backend.READY_FOR_QUERY:
            server.txn_status = chunk[start + 5 : start + 6]
            router.ready()
    out.append(chunk[kept:] if kept else chunk)


def _new_to_client(data: bytes, start: int, server: ServerState, parameters: SessionParameters) -> bool:
    """The ParameterStatus at data[start:], remembered; True when the client has not seen it."""
    name, value = m.read_parameter_status(data, start)
    server.reported(name, value)
    return parameters.reported(name, value)
