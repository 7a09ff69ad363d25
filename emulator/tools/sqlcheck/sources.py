"""Where the SQL is in a source file: each query as the server would receive it, where it is, and
the comments beside it.

In a Python file a query is a string constant (or the constant parts of an f-string) that starts
like SQL, sent whole as one query; in a .sql file it is each statement, as psql sends them.
"""

from __future__ import annotations

import ast
import bisect
import importlib.util
import io
import re
import tokenize as python_tokenize
from collections.abc import Iterator
from dataclasses import dataclass

from emulator.rdsproxy.protocol.pinning import Token, split_statements, tokenize

_SQL_START = re.compile(
    r"\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*"
    r"(select|insert|update|delete|with|set|reset|create|drop|alter|begin|commit|rollback|prepare|execute|"
    r"deallocate|discard|declare|listen|load|lock|do|call|copy|truncate|show|savepoint|values)\b",
    re.IGNORECASE | re.DOTALL,
)

# "set the table" is prose; SET is SQL only in one of its shapes.
_SET_SHAPE = re.compile(
    r"\s*set\s+(?:(?:session|local)\s+)?(?:[\w.\"]+\s*(?:=|to\b)|time\s+zone\b|names\b|role\b|schema\b|"
    r"session\s+authorization\b|transaction\b|constraints\b)",
    re.IGNORECASE,
)

# The mark of a suppression comment (see suppressions.py); files without it skip the comment scan.
MARKER = "rds-proxy:"


def looks_like_sql(text: str) -> bool:
    start = _SQL_START.match(text)
    if start is None:
        return False
    return start.group(1).lower() != "set" or _SET_SHAPE.match(text[start.start(1) :]) is not None


@dataclass(frozen=True)
class Query:
    sql: str
    line: int  # 1-based
    column: int  # 1-based, in characters
    # The lines a suppression comment on which covers this query (see suppressions.py).
    covers: range


@dataclass(frozen=True)
class Comment:
    line: int
    column: int
    text: str  # from the marker to the end of the comment


@dataclass(frozen=True)
class Source:
    queries: list[Query]
    comments: list[Comment]  # only those holding the marker


class Unparsable(Exception):
    """A Python file that is not valid Python (or not decodable): its strings cannot be found."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


def python_source(data: bytes) -> Source:
    """The SQL-looking strings of a Python module. A string covers the lines it spans, so that a
    comment on its first or its last line (or any between, inside brackets) applies to it."""
    try:
        # Honours a coding declaration, as Python would.
        text = importlib.util.decode_source(data)
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise Unparsable(exc.msg, exc.lineno or 1, exc.offset or 1) from exc
    except ValueError as exc:  # undecodable bytes (UnicodeDecodeError), null bytes
        raise Unparsable(str(exc), 1, 1) from exc
    lines = text.splitlines()
    queries = []
    for node, value in _strings(tree):
        if looks_like_sql(value):
            # ast's column is in UTF-8 bytes; people count characters.
            prefix = lines[node.lineno - 1].encode()[: node.col_offset].decode(errors="replace")
            end = node.end_lineno or node.lineno
            queries.append(Query(value, node.lineno, len(prefix) + 1, range(node.lineno, end + 1)))
    queries.sort(key=lambda query: (query.line, query.column))
    return Source(queries, list(_python_comments(text)) if MARKER in text else [])


def _strings(tree: ast.AST) -> Iterator[tuple[ast.expr, str]]:
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant | ast.JoinedStr):
            continue  # a docstring or a bare string statement: never sent anywhere
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node, node.value
        elif isinstance(node, ast.JoinedStr):
            # The interpolated parts become placeholders; the constant parts are not strings of their own.
            yield (
                node,
                "".join(
                    v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "$1"
                    for v in node.values
                ),
            )
        else:
            pending.extend(ast.iter_child_nodes(node))


def _python_comments(text: str) -> Iterator[Comment]:
    for token in python_tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == python_tokenize.COMMENT and MARKER in token.string:
            at = token.string.index(MARKER)
            yield Comment(token.start[0], token.start[1] + at + 1, token.string[at:])


class _Lines:
    """Line and column of an offset into a text."""

    def __init__(self, text: str) -> None:
        self._newlines = [index for index, char in enumerate(text) if char == "\n"]

    def position(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_left(self._newlines, offset)  # the newlines before the offset
        return line + 1, offset - (self._newlines[line - 1] + 1 if line else 0) + 1


def sql_source(text: str) -> Source:
    """Each statement of a .sql file. A statement covers the lines from the end of the one before it
    to its own end: a comment above it (after the previous statement), or on any of its lines."""
    tokens = tokenize(text)
    lines = _Lines(text)
    queries = []
    previous_end = 0
    for statement in split_statements(tokens):
        line, column = lines.position(statement[0].start)
        end_line, _ = lines.position(statement[-1].end - 1)
        covers = range(min(previous_end + 1, line), end_line + 1)
        queries.append(Query(text[statement[0].start : statement[-1].end], line, column, covers))
        previous_end = end_line
    comments = list(_sql_comments(text, tokens, lines)) if MARKER in text else []
    return Source(queries, comments)


def _sql_comments(text: str, tokens: list[Token], lines: _Lines) -> Iterator[Comment]:
    """The marker where no token is: inside a comment (the lexer drops comments)."""
    starts = [token.start for token in tokens]
    for found in re.finditer(re.escape(MARKER), text):
        index = bisect.bisect_right(starts, found.start()) - 1
        if index >= 0 and found.start() < tokens[index].end:
            continue  # in a string literal or a quoted identifier
        end = text.find("\n", found.start())
        line, column = lines.position(found.start())
        yield Comment(line, column, text[found.start() : end if end >= 0 else len(text)])
