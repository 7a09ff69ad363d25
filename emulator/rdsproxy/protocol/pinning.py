"""Which SQL makes RDS Proxy pin a session to its database connection, and why, in its words.

The rules are the current AWS list for PostgreSQL (reference, section 2.6). A cheap pre-filter
decides for most statements (a plain SELECT never reaches the lexer); the lexer understands
comments, quoted identifiers, string, escape-string and dollar-quoted literals and
multi-statement strings, which is what the rules need: they look at keywords and function names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MAX_UNPINNED_BYTES: Final = 16384

# Its head and digest are read back from the log by proxylog.DIGEST_PATTERN.
REASON_SETTINGS = (
    "SQL changed session settings that the proxy doesn't track. Consider moving session configuration to "
    'the proxy\'s initialization query. Digest: "{digest}".'
)
REASON_TOO_LONG = "The connection ran a SQL query which exceeded the 16384 byte limit."
REASON_PARSE = "A parse message was detected."

# Words one of which must appear (anywhere, any case) before a statement can pin.
# Looked for in the lower-cased text (every keyword is ASCII), one substring search each: faster than
# one regular expression of them all, which tries every alternative at every position (it runs on
# every query). "u&" brings in Unicode-escaped identifiers (U&"\0073et_config").
_PREFILTER: Final = (
    "set",
    "prepare",
    "execute",
    "deallocate",
    "discard",
    "temp",
    "declare",
    "listen",
    "load",
    "nextval",
    "advisory",
    "u&",
    # Not a pin: COPY ... FROM STDIN, which the session must watch for (see plain()).
    "stdin",
)
# DO blocks, looked for only when "do" appears at all.
_DO: Final = re.compile(r"\bdo\b")


def _may_pin(lowered: str) -> bool:
    for word in _PREFILTER:
        if word in lowered:
            return True
    return "do" in lowered and _DO.search(lowered) is not None


_PREFILTER_BYTES: Final = tuple(word.encode() for word in _PREFILTER)
_DO_BYTES: Final = re.compile(rb"\bdo\b")


def _may_pin_shape(shape: bytes) -> bool:
    """_may_pin for a text's shape (see plain_query). A shape without a word lacks it lower-cased as
    a string too: only two characters lower-case into ASCII (K, the Kelvin sign, to k and İ to i
    and a combining dot), and no word has a k or ends with an i."""
    for word in _PREFILTER_BYTES:
        if word in shape:
            return True
    return b"do" in shape and _DO_BYTES.search(shape) is not None


_SESSION_LOCK_FUNCTIONS = frozenset(
    {
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_shared",
        "pg_advisory_unlock_all",
    }
)
_SEQUENCE_FUNCTIONS = frozenset({"nextval", "setval"})
# Every function whose call pins (the proxy looks their OIDs up to judge FunctionCall messages).
PINNING_FUNCTIONS = _SESSION_LOCK_FUNCTIONS | _SEQUENCE_FUNCTIONS | {"set_config"}
_TRANSACTION_SCOPED_SET = frozenset({"local", "transaction", "constraints"})


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "quoted" (identifier), "literal", "param", "punct"
    text: str  # as written (words lower-cased)
    # What it stands for: a quoted identifier's name, a string literal's content (else the text).
    value: str = ""
    start: int = 0
    end: int = 0

    @property
    def name(self) -> str | None:
        """The identifier this token is, if it is one: PostgreSQL folds unquoted names to lower case."""
        if self.kind == "word":
            return self.text
        if self.kind == "quoted":
            return self.value
        return None


@dataclass(frozen=True)
class PinRule:
    """Options where the reference leaves RDS Proxy's behaviour open (documented defaults)."""

    # SET LOCAL / set_config(..., true) / SET TRANSACTION: AWS documents no exemption for PostgreSQL.
    exempt_set_local: bool = False


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<line_comment>--[^\n]*)
  | (?P<block_comment>/\*)
  | (?P<dollar>\$(?:[A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)?\$)
  | (?P<param>\$\d+)
  | (?P<uquoted>[uU]&"(?:[^"]|"")*")
  | (?P<ustring>[uU]&'(?:[^']|'')*')
  | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<word>[A-Za-z_\x80-\uffff][A-Za-z_0-9$\x80-\uffff]*)
  | (?P<punct>::|<=|>=|<>|!=|[^\s])
    """,
    re.VERBOSE | re.DOTALL,
)


def tokenize(sql: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    end = len(sql)
    while pos < end:
        match = _TOKEN.match(sql, pos)
        start = pos
        if match is None:  # an unterminated quote: the rest is one literal, as the server would fail it
            tokens.append(Token("literal", sql[pos:], sql[pos:], start, end))
            break
        kind = match.lastgroup
        text = match.group()
        pos = match.end()
        if kind in ("space", "line_comment"):
            continue
        if kind == "block_comment":
            pos = _skip_block_comment(sql, pos)
            continue
        if kind == "dollar":
            close = sql.find(text, pos)
            body = sql[pos:] if close < 0 else sql[pos:close]
            pos = end if close < 0 else close + len(text)
            tokens.append(Token("literal", text, body, start, pos))
        elif kind == "string":
            tokens.append(Token("literal", text, text[1:-1].replace("''", "'"), start, pos))
        elif kind == "estring":
            # What the server runs: a DO block's body or dynamic SQL may spell a keyword in escapes.
            tokens.append(Token("literal", text, _backslash_escapes(text[2:-1]), start, pos))
        elif kind == "ustring":
            tokens.append(Token("literal", text, _unicode_escapes(text[3:-1].replace("''", "'")), start, pos))
        elif kind == "number":
            tokens.append(Token("literal", text, text, start, pos))
        elif kind == "quoted":
            tokens.append(Token("quoted", text, text[1:-1].replace('""', '"'), start, pos))
        elif kind == "uquoted":
            tokens.append(Token("quoted", text, _unicode_escapes(text[3:-1].replace('""', '"')), start, pos))
        elif kind == "param":
            tokens.append(Token("param", text, text, start, pos))
        elif kind == "word":
            tokens.append(Token("word", text.lower(), text.lower(), start, pos))
        else:
            tokens.append(Token("punct", text, text, start, pos))
    return tokens


_UNICODE_ESCAPE = re.compile(r"\\(\\|[0-9A-Fa-f]{4}|\+[0-9A-Fa-f]{6})")


def _unicode_escapes(text: str) -> str:
    """U&"..." with backslash escapes (\\XXXX, \\+XXXXXX, \\\\), as PostgreSQL decodes it."""

    def decode(match: re.Match[str]) -> str:
        code = match.group(1)
        if code == "\\":
            return code
        try:
            return chr(int(code.lstrip("+"), 16))
        except ValueError:
            return match.group()

    return _UNICODE_ESCAPE.sub(decode, text)


_BACKSLASH_ESCAPE = re.compile(
    r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[0-7]{1,3}|.)|''", re.DOTALL
)
_SIMPLE_ESCAPES: Final = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _backslash_escapes(text: str) -> str:
    """E'...' content as PostgreSQL decodes it: \\b \\f \\n \\r \\t, octal \\o to \\ooo, hex \\xh and
    \\xhh, \\uXXXX and \\UXXXXXXXX; any other character after a backslash stands for itself;
    '' is a quote."""

    def decode(match: re.Match[str]) -> str:
        code = match.group(1)
        if code is None:
            return "'"
        first = code[0]
        if len(code) > 1 or first in "01234567":
            try:
                value = int(code[1:], 16) if first in "xuU" else int(code, 8)
                return chr(value) if value else ""  # the server refuses a zero byte: no keyword in it
            except ValueError:  # beyond Unicode: the server refuses the string too
                return ""
        return _SIMPLE_ESCAPES.get(first, first)

    return _BACKSLASH_ESCAPE.sub(decode, text)


def _skip_block_comment(sql: str, pos: int) -> int:
    depth = 1  # PostgreSQL block comments nest
    while depth and pos < len(sql):
        opening = sql.find("/*", pos)
        closing = sql.find("*/", pos)
        if closing < 0:
            return len(sql)
        if 0 <= opening < closing:
            depth += 1
            pos = opening + 2
        else:
            depth -= 1
            pos = closing + 2
    return pos


def split_statements(tokens: list[Token]) -> list[list[Token]]:
    statements: list[list[Token]] = [[]]
    depth = 0
    for token in tokens:
        if token.kind == "punct":
            if token.text == "(":
                depth += 1
            elif token.text == ")":
                depth = max(0, depth - 1)
            elif token.text == ";" and depth == 0:
                statements.append([])
                continue
        statements[-1].append(token)
    return [statement for statement in statements if statement]


def digest(sql: str) -> str:
    """The statement as RDS Proxy logs it: lower case, one space, literals replaced by $1..$n, and
    the text's own semicolons (real logs show none added: "set extra_float_digits = $1").

    In SET statements the values are replaced too, quoted or not: `set search_path to $1,$2,$3`.
    """
    tokens = tokenize(sql)
    parts: list[str] = []
    number = 0
    for statement in split_statements(tokens):
        values_from = _set_values_start(statement)
        rendered: list[str] = []
        for index, token in enumerate(statement):
            is_value = values_from is not None and index >= values_from and token.kind == "word"
            if token.kind in ("literal", "quoted") or (is_value and token.text != "default"):
                number += 1
                rendered.append(f"${number}")
            else:
                rendered.append(token.text)
        terminated = _followed_by_semicolon(tokens, statement[-1])
        parts.append(_join(rendered) + (";" if terminated else ""))
    return " ".join(parts)


def _followed_by_semicolon(tokens: list[Token], last: Token) -> bool:
    index = tokens.index(last)
    return index + 1 < len(tokens) and tokens[index + 1].text == ";"


def _set_values_start(statement: list[Token]) -> int | None:
    """Where the value list of SET [SESSION|LOCAL] name {TO|=} value, ... begins."""
    if statement[0].text != "set" or len(statement) < 3:
        return None
    index = 1
    if statement[index].text in ("session", "local"):
        index += 1
    if index + 1 < len(statement) and statement[index].text == "time" and statement[index + 1].text == "zone":
        return index + 2
    index += 1  # the parameter name, possibly qualified (a.b)
    while index + 1 < len(statement) and statement[index].text == ".":
        index += 2
    if index < len(statement) and statement[index].text in ("to", "="):
        index += 1
    return index


def _join(texts: list[str]) -> str:
    out = ""
    for text in texts:
        if not out or text in (",", ")", ";", "(", "::", ".") or out.endswith(("(", ",", "::", ".")):
            out += text
        else:
            out += " " + text
    return out


def _function_calls(statement: list[Token]) -> list[tuple[str, list[list[Token]]]]:
    """(name, arguments) for every call name(...) in the statement, at any depth."""
    calls = []
    for index, token in enumerate(statement[:-1]):
        name = token.name
        if name is not None and statement[index + 1].text == "(":
            args: list[list[Token]] = [[]]
            depth = 0
            for inner in statement[index + 1 :]:
                if inner.text == "(":
                    depth += 1
                    if depth == 1:
                        continue
                elif inner.text == ")":
                    depth -= 1
                    if depth == 0:
                        break
                if depth == 1 and inner.text == ",":
                    args.append([])
                    continue
                args[-1].append(inner)
            calls.append((name, args))
    return calls


def _is_true(argument: list[Token]) -> bool | None:
    if len(argument) == 1:
        text = argument[0].text.lower().strip("'")
        if text in ("true", "t", "on", "1", "yes"):
            return True
        if text in ("false", "f", "off", "0", "no"):
            return False
    return None


def _statement_rule(statement: list[Token], rule: PinRule, *, in_block: bool = False) -> str | None:
    """Which pinning rule this statement triggers (see FIXES), or None.

    in_block: a statement of a DO block's body (PL/pgSQL), where EXECUTE runs dynamic SQL and
    DECLARE declares variables: neither is the SQL command of the same name.
    """
    words = [t.text for t in statement if t.kind == "word"]
    first = statement[0].text if statement[0].kind == "word" else ""
    second = statement[1].text if len(statement) > 1 else ""
    if first == "set":
        return None if rule.exempt_set_local and second in _TRANSACTION_SCOPED_SET else "set"
    if first == "reset":
        return "set"
    if first == "explain":
        explained, analyze = _explained(statement)
        if analyze and explained:
            # EXPLAIN ANALYZE runs the statement: it pins as the statement would.
            return _statement_rule(explained, rule)
    if first == "do":
        body = next((t.value for t in statement[1:] if t.kind == "literal"), "")
        return _block_rule(body, rule)
    if in_block and first == "execute":
        # Dynamic SQL: what its strings say is what runs.
        return _literals_rule(statement, rule)
    if first in ("prepare", "execute", "deallocate", "discard"):
        return "prepared"
    if first in ("listen", "load"):
        return first
    if first == "declare" and "cursor" in words and not in_block:
        return "cursor"
    if first == "create":
        head = words[1:6]
        if "temp" in head or "temporary" in head:
            return "temporary"
    if any(t.name == "pg_temp" for t in statement):
        return "temporary"
    for index, token in enumerate(statement[:-1]):
        # SELECT ... INTO TEMP name creates a temporary table too.
        if token.text == "into" and statement[index + 1].text in ("temp", "temporary"):
            return "temporary"
    return _calls_rule(statement, rule)


def _calls_rule(statement: list[Token], rule: PinRule) -> str | None:
    """The rule a function call in the statement triggers, however the function's name is spelled."""
    for name, args in _function_calls(statement):
        found = function_rule(name, rule, is_local=_is_true(args[2]) if len(args) == 3 else None)
        if found is not None:
            return found
    return None


def function_rule(name: str, rule: PinRule = PinRule(), *, is_local: bool | None = None) -> str | None:
    """The pinning rule calling this function triggers (also for FunctionCall messages), or None."""
    if name in _SEQUENCE_FUNCTIONS:
        return "sequence"
    if name in _SESSION_LOCK_FUNCTIONS:
        return "advisory_lock"
    # set_config(name, value, is_local): unknown is_local counts as session-level, since RDS Proxy
    # pins when it can't be sure.
    if name == "set_config" and not (rule.exempt_set_local and is_local is True):
        return "set"
    return None


def _explained(statement: list[Token]) -> tuple[list[Token], bool]:
    """The statement EXPLAIN wraps, and whether EXPLAIN runs it (ANALYZE)."""
    index = 1
    analyze = False
    if index < len(statement) and statement[index].text == "(":
        close = next((i for i in range(index, len(statement)) if statement[i].text == ")"), len(statement))
        options = statement[index + 1 : close]
        for position, token in enumerate(options):
            if token.text in ("analyze", "analyse"):
                value = options[position + 1] if position + 1 < len(options) else None
                analyze = value is None or value.text == "," or _is_true([value]) is not False
        return statement[close + 1 :], analyze
    while index < len(statement) and statement[index].text in ("analyze", "analyse", "verbose"):
        analyze = analyze or statement[index].text != "verbose"
        index += 1
    return statement[index:], analyze


# Where a PL/pgSQL body starts a new statement besides after a semicolon.
_BLOCK_BOUNDARIES = frozenset({"begin", "then", "else", "elsif", "loop", "exception", "declare", "end"})
_MAX_NESTING = 3


def _block_rule(body: str, rule: PinRule, depth: int = 0) -> str | None:
    """A DO block's body pins when one of its statements would pin as SQL (SET, temporary objects,
    LISTEN, a pinning function call, ...) or its dynamic SQL (EXECUTE '...') would."""
    if depth >= _MAX_NESTING:
        return None
    statement: list[Token] = []
    statements = [statement]
    for token in tokenize(body):
        if (token.kind == "punct" and token.text == ";") or (
            token.kind == "word" and token.text in _BLOCK_BOUNDARIES
        ):
            statement = []
            statements.append(statement)
        else:
            statement.append(token)
    for inner in statements:
        found = _statement_rule(inner, rule, in_block=True) if inner else None
        if found is not None:
            return found
    return None


def _literals_rule(statement: list[Token], rule: PinRule) -> str | None:
    """The rule the SQL in a statement's string literals triggers (PL/pgSQL's EXECUTE '...')."""
    for token in statement:
        if token.kind == "literal" and token.value.strip():
            found = pin_rule(token.value, rule)
            if found is not None:
                return found
    return _calls_rule(statement, rule)


# How to avoid each kind of pin (used by the static check).
FIXES = {
    "set": "move session settings into the proxy's init_query (connection_pool_config.init_query) "
    "or onto the role (ALTER ROLE ... SET ...)",
    "prepared": "use the driver's protocol-level prepared statements (Parse/Bind/Execute), "
    "which RDS Proxy multiplexes",
    "temporary": "use a CTE or a regular table keyed by request instead of a temporary object",
    "cursor": "page with LIMIT and a keyset (WHERE id > $1) instead of a cursor",
    "listen": "listen on a direct database connection, not through the proxy",
    "load": "load libraries through the DB parameter group (shared_preload_libraries)",
    "sequence": "let a column DEFAULT produce the value and read it with INSERT ... RETURNING",
    "advisory_lock": "use transaction-level locks: pg_advisory_xact_lock / pg_try_advisory_xact_lock",
    "too_long": "keep statements under 16384 bytes: send large values as bind parameters",
}


# Applications send the same few texts again and again: plain()'s answers for short ones, kept
# (at most _KNOWN_MAX of them, up to _KNOWN_TEXT characters each: well under a megabyte).
_known_plain: Final[dict[str, bool]] = {}
_KNOWN_MAX: Final = 2048
_KNOWN_TEXT: Final = 256


def plain(sql: str) -> bool:
    """Nothing in the text can pin, act on prepared statements, reset parameters or copy from the
    client: no keyword that any of those needs, and short enough (the common case, decided without
    the lexer)."""
    known = _known_plain.get(sql)
    if known is not None:
        return known
    answer = len(sql) * 4 <= MAX_UNPINNED_BYTES and not _may_pin(sql.lower())
    if len(sql) <= _KNOWN_TEXT:
        if len(_known_plain) >= _KNOWN_MAX:
            _known_plain.clear()
        _known_plain[sql] = answer
    return answer


# A text's shape: its bytes with ASCII letters lower-cased and digits made 0. No word that can pin
# has a digit, so texts that differ only in numbers (literals written into the text, as psycopg2 and
# pgbench's simple protocol send them) share one shape, and one kept answer: a translate and a
# lookup instead of the pre-filter's searches.
_SHAPE: Final = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ123456789", b"abcdefghijklmnopqrstuvwxyz000000000"
)
_known_shapes: Final[dict[bytes, bool]] = {}


def plain_query(body: bytes) -> bool:
    """plain() for a Query message's body (the text and its terminator) as it came, not decoded:
    the same pre-filter on its shape, and the limit counted in the bytes sent. A body that does not
    end with the terminator is never plain: reading it is left to query_text, which refuses one
    that has none."""
    if not body or body[-1] != 0:
        return False
    shape = body.translate(_SHAPE)
    known = _known_shapes.get(shape)
    if known is not None:
        return known
    # (The length check counts the text's bytes: a plain text is under the limit as sent.)
    answer = len(body) - 1 <= MAX_UNPINNED_BYTES and not _may_pin_shape(shape)
    if len(body) <= _KNOWN_TEXT:
        if len(_known_shapes) >= _KNOWN_MAX:
            _known_shapes.clear()
        _known_shapes[shape] = answer
    return answer


def pin_rule(sql: str, rule: PinRule = PinRule()) -> str | None:
    """The first pinning rule the text triggers (a key of FIXES), or None."""
    # A character is at most 4 bytes in UTF-8: short texts need no encoding to be measured.
    if len(sql) * 4 > MAX_UNPINNED_BYTES and len(sql.encode()) > MAX_UNPINNED_BYTES:
        return "too_long"
    if not _may_pin(sql.lower()):
        return None
    for statement in split_statements(tokenize(sql)):
        found = _statement_rule(statement, rule)
        if found is not None:
            return found
    return None


def pin_reason(sql: str, rule: PinRule = PinRule()) -> str | None:
    """The reason RDS Proxy would log for pinning on this statement text, or None."""
    found = pin_rule(sql, rule)
    if found is None:
        return None
    if found == "too_long":
        return REASON_TOO_LONG
    return REASON_SETTINGS.format(digest=digest(sql))


def function_call_reason(name: str, arguments: int, rule: PinRule = PinRule()) -> str | None:
    """The reason a FunctionCall message (the protocol's fast path) pins, or None. RDS Proxy's log
    for one is not documented: the digest is the call as a query would write it."""
    if function_rule(name, rule) is None:
        return None
    placeholders = ", ".join(f"${number}" for number in range(1, arguments + 1))
    return REASON_SETTINGS.format(digest=digest(f"select {name}({placeholders})"))


def loads_library(sql: str) -> bool:
    """LOAD '...': a library loaded into a server session stays loaded; no reset undoes it."""
    if "load" not in sql.lower():
        return False
    return any(
        _statement_rule(statement, PinRule()) == "load" for statement in split_statements(tokenize(sql))
    )
