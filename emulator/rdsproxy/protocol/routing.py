"""Which backend response belongs to which client message, sans-I/O.

A proxy that multiplexes the extended protocol adds messages of its own (a Parse before a Bind on a
connection that has not seen the statement yet, a SET that aligns session parameters) and answers
some on its own. Every message sent to the server, and every answer made up, takes a place in one
queue in client order; server responses are matched to the head of the queue, so the client sees
exactly the responses to what it sent, in order, and nothing of what the proxy added.

The queue is also the proxy's model of the server session's progress. What the proxy did for a
message (a statement recorded, a name forgotten) is done when the message is sent and undone if
the server never carries it out: after an error in the extended protocol, PostgreSQL skips every
message up to the next Sync, and so does the queue, undoing what those messages did, newest first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, final

from emulator.rdsproxy.protocol.messages import Backend, kind_table

_EXECUTED: Final = kind_table(
    Backend.COMMAND_COMPLETE, Backend.EMPTY_QUERY_RESPONSE, Backend.PORTAL_SUSPENDED
)
_DESCRIBED: Final = kind_table(Backend.ROW_DESCRIPTION, Backend.NO_DATA)
_NOTHING: Final = kind_table()


@final
class ExpectKind:
    """What a place in the queue waits for: the answer to one message sent, or a made-up answer.

    Each kind carries what the queue needs to know of it as plain attributes, read on every server
    message. Not an Enum: a member's hash is computed in Python, and mypyc cannot compile an Enum
    with attributes of its own.
    """

    __slots__ = ("completes", "extended", "label", "plain", "until_ready")

    def __init__(self, label: str, completes: bytes, until_ready: bool, extended: bool) -> None:
        self.label = label
        # The response types that complete it, as a kind_table (ErrorResponse completes any of them).
        self.completes = completes
        # It ends at ReadyForQuery.
        self.until_ready = until_ready
        # An extended-protocol message: an error in one makes the server skip to the next Sync, and
        # once one is sent the server is mid-request until a Sync.
        self.extended = extended
        # The one entry for every message of this kind that the proxy does nothing for but wait
        # (nearly all of them): one object shared, not one made and freed per message.
        self.plain: Expected | None = None

    def __repr__(self) -> str:
        return f"<Expect {self.label}>"


class Expect:
    """The kinds, by name."""

    PARSE: Final = ExpectKind("parse", kind_table(Backend.PARSE_COMPLETE), False, True)
    BIND: Final = ExpectKind("bind", kind_table(Backend.BIND_COMPLETE), False, True)
    CLOSE: Final = ExpectKind("close", kind_table(Backend.CLOSE_COMPLETE), False, True)
    # Describe: ParameterDescription (statements only), then RowDescription or NoData.
    DESCRIBE_STATEMENT: Final = ExpectKind("describe statement", _DESCRIBED, False, True)
    DESCRIBE_PORTAL: Final = ExpectKind("describe portal", _DESCRIBED, False, True)
    EXECUTE: Final = ExpectKind("execute", _EXECUTED, False, True)
    QUERY: Final = ExpectKind("query", _NOTHING, True, False)
    FUNCTION_CALL: Final = ExpectKind("function call", _NOTHING, True, False)
    SYNC: Final = ExpectKind("sync", _NOTHING, True, False)
    # An answer the proxy made up; it goes out when everything before it is answered.
    SYNTHETIC: Final = ExpectKind("synthetic", _NOTHING, False, False)


# Notice, Notification, ParameterStatus: at any time.
_ASYNC: Final = kind_table(Backend.NOTICE_RESPONSE, Backend.NOTIFICATION_RESPONSE, Backend.PARAMETER_STATUS)


class Expected:
    """One message's answer due from the server, and what the proxy does with it.

    A plain class, not a dataclass: mypyc compiles its constructor (a dataclass's __init__ is made
    at import and runs interpreted), and every request makes one or more."""

    __slots__ = (
        "error",
        "failed",
        "forward",
        "holds_parameters",
        "kind",
        "on_complete",
        "on_ready",
        "ready",
        "synthetic",
        "undo",
    )

    def __init__(
        self,
        kind: ExpectKind,
        forward: bool = True,
        synthetic: bytes = b"",
        *,
        undo: Callable[[], None] | None = None,
        failed: Callable[[], None] | None = None,
        error: Callable[[bytes], bytes | None] | None = None,
        on_complete: Callable[[bytes], None] | None = None,
        ready: bool | None = None,
        on_ready: Callable[[bytes], list[bytes]] | None = None,
        holds_parameters: bool = False,
    ) -> None:
        self.kind = kind
        self.forward = forward
        self.synthetic = synthetic
        # Undoes what the proxy did for this message, when the server skips it.
        self.undo = undo
        # What the proxy does when this very message fails (by default the same as undo).
        self.failed = failed
        # The server's ErrorResponse for this message as the client must see it (names made the
        # client's), or None to hide it (an error of the proxy's own that the client's message reports).
        self.error = error
        # Called with each CommandComplete this message's answer holds (a simple query's statements).
        self.on_complete = on_complete
        # Whether its ReadyForQuery reaches the client (None: as the rest of its answer does).
        self.ready = ready
        # Decides at its ReadyForQuery what the client gets instead of it (the proxy may first do more).
        self.on_ready = on_ready
        # The server's ParameterStatus messages during this answer are not the client's to see yet.
        self.holds_parameters = holds_parameters


# Every kind but SYNTHETIC, whose entries carry their own answer.
for _kind in (
    Expect.PARSE,
    Expect.BIND,
    Expect.CLOSE,
    Expect.DESCRIBE_STATEMENT,
    Expect.DESCRIBE_PORTAL,
    Expect.EXECUTE,
    Expect.QUERY,
    Expect.FUNCTION_CALL,
    Expect.SYNC,
):
    _kind.plain = Expected(_kind)

# Answered entries a long pipeline's queue drops once they are half of it.
_COMPACT_AFTER: Final = 1024


class ResponseRouter:
    """The queue of answers one database connection owes its borrower, in the order they are due."""

    def __init__(self) -> None:
        # The queue is _queue[_first:]: a list read by index, whose answered entries stay until it
        # empties (see _pop). A deque's indexing and popleft are generic calls from compiled code,
        # and they were made for every server message. Empty when nothing is due.
        self._queue: list[Expected] = []
        self._first = 0
        # Extended-protocol messages went to the server since its last Sync.
        self.unsynced = False
        # An extended-protocol message failed and no Sync has been sent since: the server is skipping.
        self.skipping = False

    @property
    def idle(self) -> bool:
        """Nothing is waiting for an answer."""
        return not self._queue

    @property
    def settled(self) -> bool:
        """Nothing waits for an answer and the server is not inside an unsynced request."""
        return not self._queue and not self.unsynced and not self.skipping

    def _head(self) -> Expected | None:
        queue, first = self._queue, self._first
        return queue[first] if first < len(queue) else None

    def _pop(self) -> Expected:
        """The head, answered: taken off the queue."""
        queue = self._queue
        first = self._first
        entry = queue[first]
        first += 1
        if first == len(queue):
            queue.clear()
            first = 0
        elif first >= _COMPACT_AFTER and first * 2 >= len(queue):
            del queue[:first]  # a long pipeline: the answered half goes
            first = 0
        self._first = first
        return entry

    def pending(self) -> list[str]:
        """What is still waiting for its answer, oldest first."""
        return [entry.kind.label for entry in self._queue[self._first :]]

    def passthrough(self) -> bool:
        """Every request waiting is the client's own and ends at ReadyForQuery (simple queries,
        function calls, Syncs): until the next one arrives, the server's messages go to the client
        as they are, and each ReadyForQuery answers one request."""
        queue = self._queue
        for index in range(self._first, len(queue)):
            entry = queue[index]
            if not (
                entry.forward
                and entry.kind.until_ready
                and entry.on_complete is None
                and entry.ready is None
                and entry.on_ready is None
                and not entry.holds_parameters
            ):
                return False
        return True

    @property
    def holding_parameters(self) -> bool:
        """The answer being received holds back the server's ParameterStatus messages."""
        head = self._head()
        return head is not None and head.holds_parameters

    def ready(self) -> None:
        """A ReadyForQuery passed through (see passthrough)."""
        if self._queue:
            self._pop()

    def expect(
        self,
        kind: ExpectKind,
        *,
        forward: bool = True,
        undo: Callable[[], None] | None = None,
        failed: Callable[[], None] | None = None,
        error: Callable[[bytes], bytes | None] | None = None,
        on_complete: Callable[[bytes], None] | None = None,
        ready: bool | None = None,
        on_ready: Callable[[bytes], list[bytes]] | None = None,
        holds_parameters: bool = False,
        own: bool = False,
    ) -> Expected:
        """A message sent to the server: its answer is due after everything queued before it. With
        nothing of its own to do, it shares its kind's entry, unless `own` asks for one to be waited
        for (waiting_for)."""
        if kind is Expect.SYNC:
            self.unsynced = False
            self.skipping = False
        elif kind.extended:
            self.unsynced = True
        plain = kind.plain
        if (
            plain is not None
            and forward
            and not own
            and undo is None
            and failed is None
            and error is None
            and on_complete is None
            and ready is None
            and on_ready is None
            and not holds_parameters
        ):
            self._queue.append(plain)
            return plain
        entry = Expected(
            kind,
            forward,
            undo=undo,
            failed=failed,
            error=error,
            on_complete=on_complete,
            ready=ready,
            on_ready=on_ready,
            holds_parameters=holds_parameters,
        )
        self._queue.append(entry)
        return entry

    def waiting_for(self, entry: Expected) -> bool:
        """The answer to this message has not ended yet (an entry of its own: see expect)."""
        assert entry is not entry.kind.plain, "a shared entry stands for no one message"
        return entry in self._queue[self._first :]

    def answer(self, payload: bytes, *, undo: Callable[[], None] | None = None) -> list[bytes]:
        """A response the proxy makes up; returned at once when nothing before it is outstanding."""
        self._queue.append(Expected(Expect.SYNTHETIC, synthetic=payload, undo=undo))
        return self._drain()

    def _drain(self) -> list[bytes]:
        out = []
        while (head := self._head()) is not None and head.kind is Expect.SYNTHETIC:
            out.append(self._pop().synthetic)
        return out

    def passes(self, kind: int, data: bytes, start: int, end: int) -> list[bytes] | None:
        """route() for the message at data[start:end], without a copy of it where it can: None when
        it goes to the client as it is and nothing else goes with it (nearly always), else what
        route() gives."""
        queue = self._queue
        if _ASYNC[kind] or not queue:
            return None
        first = self._first
        head = queue[first]
        if kind == Backend.READY_FOR_QUERY:
            shown = head.forward if head.ready is None else head.ready
            if (
                head.on_ready is None
                and shown
                and (first + 1 == len(queue) or queue[first + 1].kind is not Expect.SYNTHETIC)
            ):
                self._pop()
                return None
            return self.route(kind, data[start:end])
        if kind == Backend.ERROR_RESPONSE or not head.forward:
            return self.route(kind, data[start:end])
        if kind == Backend.COMMAND_COMPLETE and head.on_complete is not None:
            return self.route(kind, data[start:end])
        if head.kind.completes[kind]:
            self._pop()
            following = self._head()
            if following is not None and following.kind is Expect.SYNTHETIC:
                return [data[start:end], *self._drain()]
        return None

    def route(self, kind: int, raw: bytes) -> list[bytes]:
        """The frames to pass to the client for one server message (raw is the whole frame)."""
        head = self._head()
        if _ASYNC[kind] or head is None:
            return [raw]
        if kind == Backend.READY_FOR_QUERY:
            self._pop()
            if head.on_ready is not None:
                return head.on_ready(raw) + self._drain()
            shown = head.forward if head.ready is None else head.ready
            out = [raw] if shown else []
            return out + self._drain()
        if kind == Backend.ERROR_RESPONSE:
            return self._failed(head, raw)
        if kind == Backend.COMMAND_COMPLETE and head.on_complete is not None:
            head.on_complete(raw)
        out = [raw] if head.forward else []
        if head.kind.completes[kind]:
            self._pop()
            out += self._drain()
        return out

    def _failed(self, head: Expected, raw: bytes) -> list[bytes]:
        shown = head.error(raw) if head.error is not None else raw
        out = [shown] if shown is not None else []
        if head.kind.until_ready:
            # An error in a simple query or a function call ends it at its ReadyForQuery; no skipping.
            return out if head.forward else []
        # The server skips everything up to the next Sync (simple queries and function calls too):
        # so does the queue, undoing what the skipped messages did, newest first.
        self._pop()
        skipped = []
        while (entry := self._head()) is not None and entry.kind is not Expect.SYNC:
            skipped.append(self._pop())
        for entry in reversed(skipped):
            if entry.undo is not None:
                entry.undo()
        reaction = head.failed or head.undo
        if reaction is not None:
            reaction()
        if not self._queue:
            self.skipping = True
        # An error caused by a message the proxy added still reaches the client: its own next
        # message would have failed the same way.
        return out
