"""What check-sql reports: its rules and the findings that name them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emulator.rdsproxy.protocol.pinning import FIXES


@dataclass(frozen=True)
class Rule:
    id: str
    summary: str  # what triggers it, in one line
    fix: str  # what to do instead


# What each of the proxy's pinning rules (the keys of FIXES) reacts to.
_PIN_SUMMARIES = {
    "set": "changes a session setting (SET, RESET, set_config) that RDS Proxy does not track",
    "prepared": "uses SQL-level prepared statements (PREPARE, EXECUTE, DEALLOCATE) or DISCARD",
    "temporary": "creates a temporary table, view or sequence, or uses pg_temp",
    "cursor": "declares a cursor (DECLARE ... CURSOR)",
    "listen": "listens for notifications (LISTEN)",
    "load": "loads a shared library into the session (LOAD)",
    "sequence": "calls nextval or setval, whose session state (currval, lastval) the proxy keeps",
    "advisory_lock": "takes or releases a session-level advisory lock (pg_advisory_lock and its kin)",
    "too_long": "sends a query longer than 16384 bytes",
}

SYNTAX_ERROR = "syntax_error"
INVALID_SUPPRESSION = "invalid_suppression"
UNUSED_SUPPRESSION = "unused_suppression"

# Every rule, the pinning ones first in the proxy's order. Built from FIXES, so that a pinning rule
# added there without a summary here fails on import rather than reporting an unknown rule.
RULES: dict[str, Rule] = {
    **{rule: Rule(rule, _PIN_SUMMARIES[rule], fix) for rule, fix in FIXES.items()},
    SYNTAX_ERROR: Rule(
        SYNTAX_ERROR,
        "a Python file that cannot be parsed (none of its SQL was checked), or a quote, comment or "
        "dollar quote a .sql file leaves open (nothing after it was checked)",
        "fix the syntax error: in SQL close what was opened; in Python, python -m py_compile FILE "
        "shows where it is",
    ),
    INVALID_SUPPRESSION: Rule(
        INVALID_SUPPRESSION,
        "a suppression comment that names no rule, an unknown rule, or gives no reason",
        "write it as `rds-proxy: allow RULE[,RULE] -- REASON`",
    ),
    UNUSED_SUPPRESSION: Rule(
        UNUSED_SUPPRESSION,
        "a suppression comment whose rule nothing it covers triggers",
        "remove it, or the rule name that no longer applies",
    ),
}


def pins(rule: str) -> bool:
    """Whether the rule is one of the proxy's pinning rules (not a problem with the file itself)."""
    return rule in FIXES


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int  # 1-based, where the statement (a Python string: where the string) starts
    column: int  # 1-based, in characters
    rule: str  # a key of RULES
    message: str
    sql: str = ""  # the statement that would pin
    reason: str = ""  # what RDS Proxy would log for it

    @property
    def fix(self) -> str:
        return RULES[self.rule].fix


@dataclass(frozen=True)
class Suppressed:
    """A finding a comment allows, with the comment's line and reason."""

    finding: Finding
    line: int
    reason: str
