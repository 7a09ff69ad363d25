"""Named prepared statements belong to the client, not to a database connection.

A client's statement is prepared on whichever connection it borrows, under a name derived from its
text, its parameter types and the client's session parameters, so that every connection prepares a
given statement once and every client that prepares the same text with the same session
parameters shares it. The session parameters are part of the name because PostgreSQL fixes some of
a statement's meaning when it parses and plans it: '2024-01-01'::timestamptz is read in the
TimeZone of the session that parsed it, and a constant folded into a plan is printed with its
extra_float_digits. StatementNames is that proxy-wide naming; a StatementCatalogue is one client's
statements by the names the client chose.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from emulator.rdsproxy.protocol.pinning import Token, split_statements, tokenize


@dataclass(frozen=True, slots=True)
class Statement:
    """One prepared statement as the client made it."""

    # Its name on database connections (shared by every client that prepares the same statement).
    backend_name: str
    query: str
    # The Parse message's raw parameter-type section, re-sent as it came.
    types: bytes
    # Why running it pins the session (RDS Proxy's reason), or None.
    pin_reason: str | None
    # Prepared with SQL PREPARE: it lives on the (pinned) connection under the client's own name.
    sql: bool = False
    # What running it does to prepared statements (its text is SQL PREPARE, DEALLOCATE...), or None.
    commands: tuple[SqlCommand | None, ...] | None = None


class StatementNames:
    """One backend name per statement text and parameter types, for the whole proxy."""

    PREFIX: Final = "rdsproxy_"

    def __init__(self) -> None:
        self._names: dict[bytes, str] = {}

    def name_for(self, query: str, types: bytes, context: tuple[tuple[str, str], ...] = ()) -> str:
        """context: the session parameters the statement is parsed under."""
        settings = "\0".join(f"{name}={value}" for name, value in context).encode()
        digest = hashlib.blake2b(query.encode() + b"\0" + types + b"\0" + settings, digest_size=16).digest()
        name = self._names.get(digest)
        if name is None:
            name = f"{self.PREFIX}{len(self._names) + 1}"
            self._names[digest] = name
        return name


class StatementCatalogue:
    """One client's named prepared statements, by the client's names."""

    def __init__(self, names: StatementNames) -> None:
        self._names = names
        self._statements: dict[str, Statement] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._statements

    def __len__(self) -> int:
        return len(self._statements)

    def get(self, name: str) -> Statement | None:
        return self._statements.get(name)

    def backend_name(self, query: str, types: bytes, context: tuple[tuple[str, str], ...] = ()) -> str:
        """The name the statement has on database connections."""
        return self._names.name_for(query, types, context)

    def prepare(
        self,
        name: str,
        query: str,
        types: bytes,
        pin_reason: str | None,
        context: tuple[tuple[str, str], ...] = (),
        *,
        commands: tuple[SqlCommand | None, ...] | None = None,
    ) -> Statement:
        """Record the client's Parse of `name` (the caller checked that the name is free)."""
        backend_name = self._names.name_for(query, types, context)
        statement = Statement(backend_name, query, types, pin_reason, commands=commands)
        self._statements[name] = statement
        return statement

    def prepared_with_sql(self, name: str) -> None:
        """SQL PREPARE made it, on the session's pinned connection, under the client's name."""
        self._statements[name] = Statement(name, "", b"", None, sql=True)

    def forget(self, name: str) -> Statement | None:
        """The client closed it (or its Parse failed): the name is free again."""
        return self._statements.pop(name, None)

    def restore(self, name: str, statement: Statement | None) -> None:
        """Put back what a message the server skipped had changed."""
        if statement is None:
            self._statements.pop(name, None)
        else:
            self._statements[name] = statement

    def forget_all(self) -> dict[str, Statement]:
        """DEALLOCATE ALL, DISCARD ALL: every named statement is gone; what there was, for an undo."""
        gone, self._statements = self._statements, {}
        return gone

    def restore_all(self, statements: dict[str, Statement]) -> None:
        self._statements = statements


# -- SQL that acts on prepared statements ---------------------------------------------------------

_SQL_PREFILTER = re.compile(r"prepare|execute|deallocate|discard")


@dataclass(frozen=True, slots=True)
class SqlCommand:
    """One statement of a simple query that acts on prepared statements."""

    # "prepare", "execute", "deallocate" (one name), "forget_all" (DEALLOCATE ALL, DISCARD ALL).
    action: str
    name: str = ""
    # Where the statement's name is in the query text, to put another name there.
    span: tuple[int, int] = (0, 0)


def sql_commands(sql: str) -> list[SqlCommand | None] | None:
    """Per statement of the query, what it does to prepared statements (None: nothing); None when no
    statement does anything to them (nearly every query)."""
    if _SQL_PREFILTER.search(sql.lower()) is None:
        return None
    commands = [_command(statement) for statement in split_statements(tokenize(sql))]
    return commands if any(commands) else None


def _command(statement: list[Token]) -> SqlCommand | None:
    words = [token.text for token in statement if token.kind == "word"]
    first = words[0] if words and statement[0].kind == "word" else ""
    if first == "discard" and words[1:2] == ["all"]:
        return SqlCommand("forget_all")
    if first not in ("prepare", "execute", "deallocate"):
        return None
    index = 1
    if first == "deallocate" and index < len(statement) and statement[index].text == "prepare":
        index += 1
    if index >= len(statement):
        return None
    token = statement[index]
    if first == "deallocate" and token.kind == "word" and token.text == "all":
        return SqlCommand("forget_all")
    if token.name is None:
        return None
    return SqlCommand(first, token.name, (token.start, token.end))


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def resets_parameters(sql: str) -> bool:
    """RESET ALL, RESET name, DISCARD ALL: the session's parameters go back to its defaults, which
    on a client's own connection are the ones it chose at startup."""
    lowered = sql.lower()
    if "reset" not in lowered and "discard" not in lowered:
        return False
    for statement in split_statements(tokenize(sql)):
        words = [token.text for token in statement if token.kind == "word"][:2]
        if words[:1] == ["reset"] or words == ["discard", "all"]:
            return True
    return False


def copies_from_client(sql: str) -> bool:
    """COPY ... FROM STDIN: once the server answers it with CopyInResponse, what the client sends
    next is COPY data, not messages."""
    lowered = sql.lower()
    if "stdin" not in lowered:
        return False
    for statement in split_statements(tokenize(sql)):
        words = [token.text for token in statement if token.kind == "word"]
        if words[:1] == ["copy"] and "stdin" in words:
            return True
    return False
