"""Suppression comments: `rds-proxy: allow RULE[,RULE] -- REASON`, in a `#` comment in Python and a
`--` or `/* */` comment in SQL.

Like ruff's `# noqa: CODE`, a suppression names the rules it allows; unlike a bare noqa it must say
why, since it stays in the code for the next reader. One without a reason, naming no rule or an
unknown one is itself a finding and allows nothing, so that the pin it meant to allow is reported
beside it; and one that nothing it covers triggers is a finding too (as ruff's RUF100): a gate that
outlives the SQL it excused would hide the next one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emulator.tools.sqlcheck.findings import (
    INVALID_SUPPRESSION,
    RULES,
    UNUSED_SUPPRESSION,
    Finding,
    Suppressed,
    pins,
)
from emulator.tools.sqlcheck.sources import MARKER, Comment, Query

_ALLOW = re.compile(re.escape(MARKER) + r"\s*allow\b(?P<rules>.*?)(?:--(?P<reason>.*))?$")


@dataclass(frozen=True)
class Suppression:
    line: int
    rules: tuple[str, ...]  # the known pinning rules it names
    reason: str


@dataclass
class Outcome:
    findings: list[Finding] = field(default_factory=list)
    suppressed: list[Suppressed] = field(default_factory=list)


def parse(path: Path, comment: Comment) -> tuple[Suppression | None, list[Finding]]:
    """The suppression a comment holds, and what is wrong with it; a comment with anything wrong
    holds none: a malformed excuse must not hide the pin it meant to allow."""
    match = _ALLOW.match(comment.text.removesuffix("*/").rstrip())
    if match is None:
        return None, [_invalid(path, comment, f"write `{MARKER} allow RULE -- REASON`")]
    names = [name for name in re.split(r"[\s,]+", match["rules"]) if name]
    reason = (match["reason"] or "").strip()
    problems = []
    if not names:
        problems.append(_invalid(path, comment, "names no rule to allow"))
    unknown = [name for name in names if not pins(name)]
    if unknown:
        known = ", ".join(rule for rule in RULES if pins(rule))
        named = ", ".join(unknown)
        problems.append(_invalid(path, comment, f"names an unknown rule: {named} (rules: {known})"))
    if not reason:
        problems.append(_invalid(path, comment, "gives no reason: add `-- REASON` after the rules"))
    if problems:
        return None, problems
    return Suppression(comment.line, tuple(names), reason), []


def _invalid(path: Path, comment: Comment, problem: str) -> Finding:
    return Finding(path, comment.line, comment.column, INVALID_SUPPRESSION, f"suppression {problem}")


def apply(path: Path, pinned: Sequence[tuple[Finding, Query]], comments: Sequence[Comment]) -> Outcome:
    """Each pinning finding is allowed by a suppression of its rule on a line its query covers."""
    outcome = Outcome()
    suppressions = []
    for comment in comments:
        suppression, problems = parse(path, comment)
        outcome.findings += problems
        if suppression is not None:
            suppressions.append((suppression, comment))
    used: set[tuple[int, str]] = set()
    for finding, query in pinned:
        allowing = next(
            (s for s, _ in suppressions if s.line in query.covers and finding.rule in s.rules), None
        )
        if allowing is None:
            outcome.findings.append(finding)
        else:
            outcome.suppressed.append(Suppressed(finding, allowing.line, allowing.reason))
            used.add((allowing.line, finding.rule))
    for suppression, comment in suppressions:
        for rule in suppression.rules:
            if (suppression.line, rule) not in used:
                outcome.findings.append(
                    Finding(
                        path,
                        comment.line,
                        comment.column,
                        UNUSED_SUPPRESSION,
                        f"unused suppression: nothing it covers pins by {rule}",
                    )
                )
    return outcome
