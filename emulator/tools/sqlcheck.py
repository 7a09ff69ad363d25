"""A static check: which SQL in a handler's code would make RDS Proxy pin, why, and what to do instead.

Python files are read with ast: every string constant (and the constant parts of f-strings) that
starts like SQL is classified by the emulator's own pinning rules. .sql files are checked whole.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from emulator.rdsproxy.protocol.pinning import FIXES, pin_reason, pin_rule

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


def looks_like_sql(text: str) -> bool:
    start = _SQL_START.match(text)
    if start is None:
        return False
    return start.group(1).lower() != "set" or _SET_SHAPE.match(text[start.start(1) :]) is not None


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    sql: str
    rule: str
    reason: str

    @property
    def fix(self) -> str:
        return FIXES[self.rule]


def _python_strings(source: str) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            parts = [
                v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "$1"
                for v in node.values
            ]
            yield node.lineno, "".join(parts)


def check_file(path: Path) -> list[Finding]:
    text = path.read_text(errors="replace")
    candidates = [(1, text)] if path.suffix == ".sql" else list(_python_strings(text))
    findings = []
    for line, sql in candidates:
        if path.suffix != ".sql" and not looks_like_sql(sql):
            continue
        rule = pin_rule(sql)
        if rule is not None:
            findings.append(Finding(path, line, sql, rule, pin_reason(sql) or ""))
    return findings


def check_paths(paths: Iterable[Path]) -> list[Finding]:
    findings: list[Finding] = []
    for root in paths:
        files = (
            [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in (".py", ".sql"))
        )
        for path in files:
            findings += check_file(path)
    return findings
