"""Which backend response belongs to which client message, sans-I/O.

A proxy that multiplexes the extended protocol adds messages of its own (a Parse before a Bind on a
connection that has not seen the statement yet, a SET that aligns session parameters) and answers
some on its own. Every message sent to the server, and every answer made up, takes a place in one
queue in client order; server responses are matched to the head of the queue, so the client sees
exactly the responses to what it sent, in order, and nothing of what the proxy added.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# Message type -> the response types that complete it (ErrorResponse completes any of them).
_COMPLETES = {
    "P": frozenset(b"1"),
    "B": frozenset(b"2"),
    "C": frozenset(b"3"),
    "DS": frozenset(b"Tn"),  # Describe statement: ParameterDescription, then RowDescription / NoData
    "DP": frozenset(b"Tn"),
    "E": frozenset(b"CIs"),  # CommandComplete, EmptyQueryResponse, PortalSuspended
}
_UNTIL_READY = frozenset({"Q", "F", "S"})  # Query, FunctionCall, Sync end at ReadyForQuery
_ASYNC = frozenset(b"NAS")  # Notice, Notification, ParameterStatus: at any time
_ERROR = ord("E")
_READY = ord("Z")


@dataclass(slots=True)
class Expected:
    kind: str
    forward: bool = True
    synthetic: bytes = b""
    on_error: Callable[[], None] | None = None

    @property
    def is_synthetic(self) -> bool:
        return bool(self.synthetic)


class ResponseRouter:
    def __init__(self) -> None:
        self._queue: deque[Expected] = deque()

    @property
    def idle(self) -> bool:
        """Nothing is waiting for an answer."""
        return not self._queue

    def pending(self) -> list[str]:
        """The kinds of message still waiting for their answer, oldest first."""
        return [entry.kind for entry in self._queue]

    def passthrough(self) -> bool:
        """Every request waiting is the client's own and ends at ReadyForQuery (simple queries,
        function calls, Syncs): until the next one arrives, the server's messages go to the client
        as they are, and each ReadyForQuery answers one request."""
        return all(entry.forward and entry.kind in _UNTIL_READY for entry in self._queue)

    def ready(self) -> None:
        """A ReadyForQuery passed through (see passthrough)."""
        if self._queue:
            self._queue.popleft()

    def expect(self, kind: str, *, forward: bool = True, on_error: Callable[[], None] | None = None) -> None:
        self._queue.append(Expected(kind, forward, on_error=on_error))

    def answer(self, payload: bytes) -> list[bytes]:
        """A response the proxy makes up; returned at once when nothing before it is outstanding."""
        self._queue.append(Expected("synthetic", synthetic=payload))
        return self._drain()

    def _drain(self) -> list[bytes]:
        out = []
        while self._queue and self._queue[0].is_synthetic:
            out.append(self._queue.popleft().synthetic)
        return out

    def route(self, kind: int, raw: bytes) -> list[bytes]:
        """The frames to pass to the client for one server message (raw is the whole frame)."""
        if kind in _ASYNC or not self._queue:
            return [raw]
        head = self._queue[0]
        if kind == _READY:
            self._queue.popleft()
            out = [raw] if head.forward else []
            return out + self._drain()
        if kind == _ERROR:
            if head.kind in _UNTIL_READY:
                return [raw] if head.forward else []
            # The server skips everything up to the next Sync: so do our expectations and made-up answers.
            self._queue.popleft()
            if head.on_error is not None:
                head.on_error()
            while self._queue and self._queue[0].kind not in _UNTIL_READY:
                skipped = self._queue.popleft()
                if skipped.on_error is not None:
                    skipped.on_error()
            # An error caused by a message the proxy added still reaches the client: its own next
            # message would have failed the same way.
            return [raw]
        out = [raw] if head.forward else []
        done = _COMPLETES.get(head.kind)
        if done is not None and kind in done:
            self._queue.popleft()
            out += self._drain()
        return out
