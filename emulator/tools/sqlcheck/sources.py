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
class Unterminated:
    """A quote, block comment or dollar quote that a .sql file never closes: psql reads the rest of
    the file into it and the server rejects that statement, so nothing from there on is checked."""

    what: str
    line: int
    column: int


@dataclass(frozen=True)
class Source:
    queries: list[Query]
    comments: list[Comment]  # only those holding the marker
    unterminated: Unterminated | None = None


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
    to its own end: a comment above it (after the previous statement), or on any of its lines.
    Where something is left open, only the statements that end before it are."""
    tokens = tokenize(text)
    lines = _Lines(text)
    open_at = _unterminated(text, tokens)
    limit = len(text) if open_at is None else open_at[0]
    statements = split_statements([token for token in tokens if token.start < limit])
    if open_at is not None:
        statements = _ended_before(statements, tokens, limit)
    queries = []
    previous_end = 0
    for statement in statements:
        line, column = lines.position(statement[0].start)
        end_line, _ = lines.position(statement[-1].end - 1)
        covers = range(min(previous_end + 1, line), end_line + 1)
        queries.append(Query(text[statement[0].start : statement[-1].end], line, column, covers))
        previous_end = end_line
    comments = list(_sql_comments(text[:limit], tokens, lines)) if MARKER in text else []
    if open_at is None:
        return Source(queries, comments)
    offset, what = open_at
    return Source(queries, comments, Unterminated(what, *lines.position(offset)))


# What the proxy's lexer makes of an opening quote it finds no end for: a punctuation token.
_OPEN_QUOTES = {"'": "quoted string", '"': "quoted identifier"}
_COMMENT_MARK = re.compile(r"/\*|\*/")


def _unterminated(text: str, tokens: list[Token]) -> tuple[int, str] | None:
    """Where the first thing left open starts, and what it is."""
    for token in tokens:
        if token.kind == "punct" and token.text in _OPEN_QUOTES:
            return token.start, _OPEN_QUOTES[token.text]
        if token.kind == "literal" and token.text.startswith("$") and not _closed_dollar_quote(text, token):
            return token.start, "dollar-quoted string"
    # A block comment left open swallows the rest, so it can only follow the last token.
    comment = _unclosed_comment(text, tokens[-1].end if tokens else 0)
    return None if comment is None else (comment, "block comment")


def _closed_dollar_quote(text: str, token: Token) -> bool:
    tag = token.text
    return token.end - token.start >= 2 * len(tag) and text[token.end - len(tag) : token.end] == tag


def _unclosed_comment(text: str, position: int) -> int | None:
    """Where a block comment opens that is never closed, in a part of the text that holds only
    space and comments. Block comments nest in PostgreSQL."""
    while position < len(text):
        if text.startswith("--", position):
            newline = text.find("\n", position)
            if newline < 0:
                return None
            position = newline + 1
        elif text.startswith("/*", position):
            opening, depth, position = position, 1, position + 2
            while depth:
                mark = _COMMENT_MARK.search(text, position)
                if mark is None:
                    return opening
                depth += 1 if mark.group() == "/*" else -1
                position = mark.end()
        else:
            position += 1
    return None


def _ended_before(statements: list[list[Token]], tokens: list[Token], limit: int) -> list[list[Token]]:
    """The statements a semicolon ends before limit: the one left open is sent whole and fails."""
    semicolons = [t.start for t in tokens if t.kind == "punct" and t.text == ";" and t.start < limit]
    last = semicolons[-1] if semicolons else -1
    return [statement for statement in statements if statement[-1].end <= last]


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
