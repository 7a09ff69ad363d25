"""Named prepared statements belong to the client, not to a database connection.

A client's statement is prepared on whichever connection it borrows, under a name derived from its
text and parameter types, so that every connection prepares a given statement once and every client
that prepares the same text shares it. StatementNames is that proxy-wide naming; a
StatementCatalogue is one client's statements by the names the client chose.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


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


class StatementNames:
    """One backend name per statement text and parameter types, for the whole proxy."""

    PREFIX = "rdsproxy_"

    def __init__(self) -> None:
        self._names: dict[bytes, str] = {}

    def name_for(self, query: str, types: bytes) -> str:
        digest = hashlib.blake2b(query.encode() + b"\0" + types, digest_size=16).digest()
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

    def prepare(self, name: str, query: str, types: bytes, pin_reason: str | None) -> Statement:
        """Record the client's Parse of `name` (the caller checked that the name is free)."""
        statement = Statement(self._names.name_for(query, types), query, types, pin_reason)
        self._statements[name] = statement
        return statement

    def forget(self, name: str) -> Statement | None:
        """The client closed it (or its Parse failed): the name is free again."""
        return self._statements.pop(name, None)
