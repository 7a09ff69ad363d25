"""Which backend response belongs to which client message, sans-I/O.

A proxy that multiplexes the extended protocol adds messages of its own (a Parse before a Bind on a
connection that has not seen the statement yet, a SET that aligns session parameters) and answers
some on its own. Every message sent to the server, and every answer made up, takes a place in one
queue in client order; server responses are matched to the head of the queue, so the client sees
exactly the responses to what it sent, in order, and nothing of what the proxy added.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from emulator.rdsproxy.protocol.messages import Backend


class Expect(enum.Enum):
    """What a place in the queue waits for: the answer to one message sent, or a made-up answer."""

    PARSE = "parse"
    BIND = "bind"
    CLOSE = "close"
    DESCRIBE_STATEMENT = "describe statement"
    DESCRIBE_PORTAL = "describe portal"
    EXECUTE = "execute"
    QUERY = "query"
    FUNCTION_CALL = "function call"
    SYNC = "sync"
    # An answer the proxy made up; it goes out when everything before it is answered.
    SYNTHETIC = "synthetic"


# The response types that complete a message (ErrorResponse completes any of them).
_COMPLETES = {
    Expect.PARSE: frozenset({Backend.PARSE_COMPLETE}),
    Expect.BIND: frozenset({Backend.BIND_COMPLETE}),
    Expect.CLOSE: frozenset({Backend.CLOSE_COMPLETE}),
    # Describe: ParameterDescription (statements only), then RowDescription or NoData.
    Expect.DESCRIBE_STATEMENT: frozenset({Backend.ROW_DESCRIPTION, Backend.NO_DATA}),
    Expect.DESCRIBE_PORTAL: frozenset({Backend.ROW_DESCRIPTION, Backend.NO_DATA}),
    Expect.EXECUTE: frozenset(
        {Backend.COMMAND_COMPLETE, Backend.EMPTY_QUERY_RESPONSE, Backend.PORTAL_SUSPENDED}
    ),
}
# Query, FunctionCall and Sync end at ReadyForQuery.
_UNTIL_READY = frozenset({Expect.QUERY, Expect.FUNCTION_CALL, Expect.SYNC})
# Notice, Notification, ParameterStatus: at any time.
_ASYNC = frozenset({Backend.NOTICE_RESPONSE, Backend.NOTIFICATION_RESPONSE, Backend.PARAMETER_STATUS})


@dataclass(slots=True)
class Expected:
    kind: Expect
    forward: bool = True
    synthetic: bytes = b""
    on_error: Callable[[], None] | None = None


class ResponseRouter:
    """The queue of answers one database connection owes its borrower, in the order they are due."""

    def __init__(self) -> None:
        self._queue: deque[Expected] = deque()

    @property
    def idle(self) -> bool:
        """Nothing is waiting for an answer."""
        return not self._queue

    def pending(self) -> list[str]:
        """What is still waiting for its answer, oldest first."""
        return [entry.kind.value for entry in self._queue]

    def passthrough(self) -> bool:
        """Every request waiting is the client's own and ends at ReadyForQuery (simple queries,
        function calls, Syncs): until the next one arrives, the server's messages go to the client
        as they are, and each ReadyForQuery answers one request."""
        return all(entry.forward and entry.kind in _UNTIL_READY for entry in self._queue)

    def ready(self) -> None:
        """A ReadyForQuery passed through (see passthrough)."""
        if self._queue:
            self._queue.popleft()

    def expect(
        self, kind: Expect, *, forward: bool = True, on_error: Callable[[], None] | None = None
    ) -> None:
        self._queue.append(Expected(kind, forward, on_error=on_error))

    def answer(self, payload: bytes) -> list[bytes]:
        """A response the proxy makes up; returned at once when nothing before it is outstanding."""
        self._queue.append(Expected(Expect.SYNTHETIC, synthetic=payload))
        return self._drain()

    def _drain(self) -> list[bytes]:
        out = []
        while self._queue and self._queue[0].kind is Expect.SYNTHETIC:
            out.append(self._queue.popleft().synthetic)
        return out

    def route(self, kind: int, raw: bytes) -> list[bytes]:
        """The frames to pass to the client for one server message (raw is the whole frame)."""
        if kind in _ASYNC or not self._queue:
            return [raw]
        head = self._queue[0]
        if kind == Backend.READY_FOR_QUERY:
            self._queue.popleft()
            out = [raw] if head.forward else []
            return out + self._drain()
        if kind == Backend.ERROR_RESPONSE:
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
