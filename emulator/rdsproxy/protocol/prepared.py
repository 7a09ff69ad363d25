"""A client's prepared statements, named and unnamed, kept right on whichever connection it borrows.

PostgreSQL keeps prepared statements per server session; through the proxy the client's session
moves between database connections, so the proxy keeps them for it and makes every message mean
what it would mean on the client's own session:

- a named statement lives on database connections under a name derived from its text (shared by
  every client that prepares the same text), is prepared on a connection the first time the client
  uses it there, and belongs to the client only: another client's statements are invisible to it;
- the unnamed statement is the client's own too: before the client binds or describes it on a
  connection whose unnamed statement is someone else's, the proxy prepares it again there; a simple
  query drops it, as PostgreSQL does;
- what a message does is done when it is sent, and undone when the server skips it (an earlier
  message of the pipeline failed);
- errors come from the server itself, with the client's names in them: to fail as PostgreSQL would,
  the proxy sends the server a message that fails the same way (so the server also aborts the
  transaction and skips to the next Sync, exactly as PostgreSQL would on the client's session);
- SQL PREPARE, EXECUTE and DEALLOCATE (which pin) reach the same statements: the proxy puts the
  database connection's name of a protocol-level statement into the SQL of a simple query, and
  applies PREPARE, DEALLOCATE [ALL] and DISCARD ALL once the server reports them done, whether they
  came in a simple query or as a portal's statement. (SQL sent with Parse is not renamed: EXECUTE or
  DEALLOCATE there reaches SQL-prepared statements only; a driver that sends EXECUTE of its own
  protocol-level statement with Parse gets "prepared statement does not exist". Renaming there would
  mean preparing the statement in the middle of the client's pipeline, which needs a Sync of its
  own, and a Sync would end the client's implicit transaction.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend, Frontend
from emulator.rdsproxy.protocol.parameters import Key
from emulator.rdsproxy.protocol.routing import Expect
from emulator.rdsproxy.protocol.server import FAILED, ServerState
from emulator.rdsproxy.protocol.statements import (
    SqlCommand,
    Statement,
    StatementCatalogue,
    StatementNames,
    quote_identifier,
    sql_commands,
)

_PARSE_COMPLETE = m.frame(Backend.PARSE_COMPLETE)
_CLOSE_COMPLETE = m.frame(Backend.CLOSE_COMPLETE)
_UNNAMED_CLOSE = m.target_message(Frontend.CLOSE, "S", "")


@dataclass(frozen=True, slots=True)
class Query:
    """A simple query as the proxy sends it."""

    text: str
    # Undoes what sending it did (it dropped the unnamed statement), if the server skips it.
    undo: Callable[[], None] | None
    # Applies what its statements did to prepared statements, at each CommandComplete.
    on_complete: Callable[[bytes], None] | None = None
    # The server's error with the client's statement names in it.
    error: Callable[[bytes], bytes | None] | None = None


class Unnamed:
    """The client's unnamed statement (each Parse makes a new one: identity tells them apart). A
    plain class: mypyc compiles its constructor, where a dataclass's runs interpreted."""

    __slots__ = ("commands", "query", "types")

    def __init__(
        self, query: str, types: bytes, commands: tuple[SqlCommand | None, ...] | None = None
    ) -> None:
        self.query = query
        self.types = types
        # What running it does to prepared statements, or None.
        self.commands = commands


class _Binding:
    """What a Bind of one named statement to the unnamed portal needs, kept from the last one: a
    client binds the same statement again and again (each execution of a prepared statement)."""

    __slots__ = ("name", "prefix", "renamed", "renamer", "statement")

    def __init__(self, name: str, statement: Statement) -> None:
        self.name = name
        self.statement = statement
        # The start of the client's Bind body (the unnamed portal, then the name), and the server's.
        self.prefix = b"\0" + name.encode() + b"\0"
        self.renamed = b"\0" + statement.backend_name.encode() + b"\0"
        self.renamer = _renamed(statement.backend_name, name)


class PreparedStatements:
    def __init__(
        self,
        names: StatementNames,
        send: Callable[[bytes], None],
        to_client: Callable[[list[bytes]], None],
        context: Callable[[], Key],
    ) -> None:
        self.catalogue = StatementCatalogue(names)
        # The client's session parameters: statements are shared only between equal ones.
        self._context = context
        self.unnamed: Unnamed | None = None
        # Portals whose statement acts on prepared statements (SQL PREPARE, DEALLOCATE...): by name.
        self._portals: dict[str, tuple[SqlCommand | None, ...]] = {}
        self._binding: _Binding | None = None
        self._send = send
        self._to_client = to_client

    # -- Parse ------------------------------------------------------------------------------------

    def parse(
        self,
        state: ServerState,
        name: str,
        query: str,
        types: bytes,
        *,
        pin_reason: str | None,
        plain: bool,
        raw: bytes,
    ) -> None:
        """plain: the text has no keyword of SQL that acts on prepared statements; raw: the client's
        Parse message, sent as it came when it needs no renaming."""
        commands = None if plain else _as_tuple(sql_commands(query))
        if not name:
            self._parse_unnamed(state, query, types, raw, commands)
        elif name in self.catalogue:
            self._parse_duplicate(state, name, query, types)
        else:
            self._parse_named(state, name, query, types, pin_reason, commands=commands)

    def answered_here(self, state: ServerState, name: str, query: str, types: bytes) -> bool:
        """A Parse the proxy answers itself: a new name of the client's for a statement the
        connection has already."""
        if not name or name in self.catalogue:
            return False
        return self.catalogue.backend_name(query, types, self._context()) in state.statements

    def _parse_unnamed(
        self,
        state: ServerState,
        query: str,
        types: bytes,
        raw: bytes,
        commands: tuple[SqlCommand | None, ...] | None,
    ) -> None:
        statement = Unnamed(query, types, commands)
        before = (self.unnamed, state.unnamed)
        self.unnamed = state.unnamed = statement

        def undo() -> None:
            self.unnamed, state.unnamed = before

        def failed() -> None:
            # PostgreSQL drops the previous unnamed statement before it parses the new one.
            self.unnamed = state.unnamed = None

        state.router.expect(Expect.PARSE, undo=undo, failed=failed)
        self._send(raw)

    def _parse_named(
        self,
        state: ServerState,
        name: str,
        query: str,
        types: bytes,
        pin_reason: str | None,
        *,
        commands: tuple[SqlCommand | None, ...] | None,
    ) -> None:
        statement = self.catalogue.prepare(name, query, types, pin_reason, self._context(), commands=commands)
        backend_name = statement.backend_name
        router = state.router

        def undo() -> None:
            self.catalogue.forget(name)

        if backend_name in state.statements:
            if state.txn_status == FAILED and router.idle and not _ENDS_TRANSACTION.match(query):
                # In a failed transaction PostgreSQL refuses the Parse (25P02) before it looks at
                # the name: the server says so, on the copy it has, and keeps that copy. (A Parse
                # behind unanswered requests waits for them, so the status is the current one:
                # the session's _answers_first.)
                router.expect(Expect.PARSE, undo=undo, error=_renamed(backend_name, name))
                self._send(m.parse_message(backend_name, query, types))
                return
            # Prepared on this connection already (by this client or another): answered here.
            self._to_client(router.answer(_PARSE_COMPLETE, undo=undo))
            return
        state.statements.add(backend_name)

        def undo_both() -> None:
            state.statements.discard(backend_name)
            self.catalogue.forget(name)

        router.expect(Expect.PARSE, undo=undo_both, error=_renamed(backend_name, name))
        self._send(m.parse_message(backend_name, query, types))

    def _parse_duplicate(self, state: ServerState, name: str, query: str, types: bytes) -> None:
        """The client already has a statement by that name: PostgreSQL fails the Parse (after it
        parsed the text, so a syntax error wins). The server does it here too, on the copy of the
        client's statement, and the client sees its own name in the error."""
        backend_name = self._on_server(state, name)
        state.router.expect(Expect.PARSE, error=_renamed(backend_name, name))
        self._send(m.parse_message(backend_name, query, types))

    # -- Bind, Describe, Close --------------------------------------------------------------------

    def bind(self, state: ServerState, frame: m.Frame) -> Statement | None:
        """Forward a Bind, its statement made the client's; the named statement it binds, if any."""
        raw = frame.raw
        binding = self._binding
        if binding is not None:
            # The statement bound last, again (its name read by one comparison), and still the one
            # the client has under that name.
            prefix = binding.prefix
            after = 5 + len(prefix)
            if raw[5:after] == prefix and self.catalogue.get(binding.name) is binding.statement:
                bound = binding.statement
                self._bound("", bound.commands)
                self._on_server_as(state, binding.name, bound)
                state.router.expect(Expect.BIND, error=binding.renamer)
                self._send(m.bind_message(binding.renamed, raw[after:]))
                return bound
        body = frame.body
        portal, name, start, rest_at = m.bind_statement(body)
        if not name:
            self._unnamed_on_server(state)
            self._bound(portal, self.unnamed.commands if self.unnamed is not None else None)
            state.router.expect(Expect.BIND)
            self._send(frame.raw)
            return None
        statement = self.catalogue.get(name)
        self._bound(portal, statement.commands if statement is not None else None)
        backend_name = self._on_server(state, name)
        state.router.expect(Expect.BIND, error=_renamed(backend_name, name))
        self._send(m.rename_bind(body, backend_name, start, rest_at))
        if statement is not None and not portal and not statement.sql:
            self._binding = _Binding(name, statement)
        return statement

    def _bound(self, portal: str, commands: tuple[SqlCommand | None, ...] | None) -> None:
        if commands is not None:
            self._portals[portal] = commands
        elif self._portals:
            self._portals.pop(portal, None)

    def execute(self, state: ServerState, body: bytes) -> Callable[[bytes], None] | None:
        """What the Execute's portal does to prepared statements, applied when the server reports
        it done (None, nearly always: nothing). A portal the server no longer has fails, and what
        fails is never applied."""
        if not self._portals:
            return None
        commands = self._portals.get(m.read_cstring(body)[0])
        return None if commands is None else self._completions(state, commands)

    def describe_statement(self, state: ServerState, name: str) -> None:
        if not name:
            self._unnamed_on_server(state)
            state.router.expect(Expect.DESCRIBE_STATEMENT)
            self._send(m.target_message(Frontend.DESCRIBE, "S", ""))
            return
        backend_name = self._on_server(state, name)
        state.router.expect(Expect.DESCRIBE_STATEMENT, error=_renamed(backend_name, name))
        self._send(m.target_message(Frontend.DESCRIBE, "S", backend_name))

    def close_statement(self, state: ServerState | None, name: str) -> None:
        """Close never pins and needs no connection: the client forgets the statement; a connection
        keeps its copy for the next client that prepares the same text. Closing an unknown name is
        no error."""
        if name:
            before = self.catalogue.forget(name)

            def undo() -> None:
                self.catalogue.restore(name, before)

        else:
            unnamed, self.unnamed = self.unnamed, None

            def undo() -> None:
                self.unnamed = unnamed

        if state is None:
            self._to_client([_CLOSE_COMPLETE])
        else:
            self._to_client(state.router.answer(_CLOSE_COMPLETE, undo=undo))

    def _on_server(self, state: ServerState, name: str) -> str:
        """The name the server knows the client's statement by, preparing it there first when
        needed. An unknown name goes to the server unchanged (PostgreSQL's error names it), unless
        it could be one of the proxy's own names."""
        statement = self.catalogue.get(name)
        if statement is None:
            return _MISSING if name.startswith(StatementNames.PREFIX) else name
        return self._on_server_as(state, name, statement)

    def _on_server_as(self, state: ServerState, name: str, statement: Statement) -> str:
        """_on_server for the client's statement `name`, known to be `statement`."""
        backend_name = statement.backend_name
        if backend_name not in state.statements and not statement.sql:
            state.statements.add(backend_name)
            state.router.expect(
                Expect.PARSE,
                forward=False,
                undo=lambda: state.statements.discard(backend_name),
                error=_renamed(backend_name, name),
            )
            self._send(m.parse_message(backend_name, statement.query, statement.types))
        return backend_name

    def _unnamed_on_server(self, state: ServerState) -> None:
        """Make the server's unnamed statement the client's: prepared again, or, when the client has
        none, closed (so that the server fails the message as PostgreSQL would)."""
        mine = self.unnamed
        if state.unnamed is mine:
            return
        before = state.unnamed
        state.unnamed = mine

        def undo() -> None:
            state.unnamed = before

        if mine is None:
            state.router.expect(Expect.CLOSE, forward=False, undo=undo)
            self._send(_UNNAMED_CLOSE)
            return

        def failed() -> None:
            state.unnamed = None

        state.router.expect(Expect.PARSE, forward=False, undo=undo, failed=failed)
        self._send(m.parse_message("", mine.query, mine.types))

    # -- simple queries ---------------------------------------------------------------------------

    def drop_unnamed(self, state: ServerState) -> Callable[[], None] | None:
        """A simple query drops the unnamed statement, on the server as on the client's session; what
        puts it back if the server skips the query (None when there was none)."""
        if self.unnamed is None and state.unnamed is None:
            return None
        before = (self.unnamed, state.unnamed)
        self.unnamed = state.unnamed = None

        def undo() -> None:
            self.unnamed, state.unnamed = before

        return undo

    def query(self, state: ServerState, text: str) -> Query:
        """A simple query that may act on prepared statements is about to go to the server: the text
        to send (statement names made the server's), and how its answer is kept right."""
        undo = self.drop_unnamed(state)
        commands = sql_commands(text)
        if commands is None:
            return Query(text, undo)
        sent = text
        renames: list[tuple[str, str]] = []
        # Right to left, so that earlier spans stay where they are.
        for command in reversed([c for c in commands if c is not None]):
            statement = self.catalogue.get(command.name) if command.name else None
            if statement is not None and not statement.sql:
                backend_name = self._on_server_for_query(state, command.name)
                start, end = command.span
                sent = sent[:start] + quote_identifier(backend_name) + sent[end:]
                renames.append((backend_name, command.name))

        def error(raw: bytes) -> bytes:
            for backend_name, name in renames:
                raw = m.rename_in_error(raw, backend_name, name)
            return raw

        return Query(sent, undo, self._completions(state, commands), error if renames else None)

    def _on_server_for_query(self, state: ServerState, name: str) -> str:
        """Like _on_server, for SQL that names a protocol-level statement: prepared (with its own
        Sync, quietly) before the query runs, unless the transaction is aborted (the query fails
        anyway)."""
        statement = self.catalogue.get(name)
        assert statement is not None
        backend_name = statement.backend_name
        if backend_name not in state.statements and state.txn_status != b"E":
            state.statements.add(backend_name)
            router = state.router
            router.expect(Expect.PARSE, forward=False, error=_quiet)
            router.expect(Expect.SYNC, forward=False)
            self._send(m.parse_message(backend_name, statement.query, statement.types) + m.SYNC)
        return backend_name

    def _completions(
        self, state: ServerState, commands: Sequence[SqlCommand | None]
    ) -> Callable[[bytes], None]:
        """Each CommandComplete of the query ends one of its statements, in order: what the
        statements did to prepared statements is applied as each is reported done."""
        pending = list(commands)

        def completed(raw: bytes) -> None:
            if not pending:
                return
            command = pending.pop(0)
            if command is None:
                return
            if command.action == "forget_all":
                self.catalogue.forget_all()
                state.statements.clear()
            elif command.action == "prepare":
                self.catalogue.prepared_with_sql(command.name)
                state.statements.add(command.name)
            elif command.action == "deallocate":
                statement = self.catalogue.forget(command.name)
                if statement is not None:
                    state.statements.discard(statement.backend_name)

        return completed


# A statement name no server session has (the proxy's names are numbered).
_MISSING = f"{StatementNames.PREFIX}missing"


def _as_tuple(commands: list[SqlCommand | None] | None) -> tuple[SqlCommand | None, ...] | None:
    return None if commands is None else tuple(commands)


# What PostgreSQL still parses in a failed transaction (IsTransactionExitStmt): COMMIT, ROLLBACK
# [TO SAVEPOINT], PREPARE TRANSACTION, and their other spellings END and ABORT.
_ENDS_TRANSACTION = re.compile(r"\s*(commit|end|rollback|abort|prepare\s+transaction)\b", re.IGNORECASE)


def _renamed(backend_name: str, name: str) -> Callable[[bytes], bytes | None]:
    """The server's error with the client's statement name where the server wrote its own."""
    if backend_name == name:
        return _unchanged
    return lambda raw: m.rename_in_error(raw, backend_name, name)


def _unchanged(raw: bytes) -> bytes:
    return raw


def _quiet(raw: bytes) -> bytes | None:
    """An error of the proxy's own preparation: the client's query reports what went wrong."""
    return None
