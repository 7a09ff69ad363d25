"""check-sql's output."""

from __future__ import annotations

from emulator.tools.sqlcheck.check import CheckResult
from emulator.tools.sqlcheck.findings import pins


def to_text(result: CheckResult) -> str:
    """Like ruff's: PATH:LINE:COLUMN: RULE message, with RDS Proxy's reason and the fix under a pin."""
    lines = []
    for finding in result.findings:
        lines.append(f"{finding.path}:{finding.line}:{finding.column}: {finding.rule}: {finding.message}")
        if pins(finding.rule):
            lines.append(f"    why: {finding.reason}")
        lines.append(f"    fix: {finding.fix}")
    lines.append(_summary(result))
    return "\n".join(lines) + "\n"


def _summary(result: CheckResult) -> str:
    pinned = sum(1 for finding in result.findings if pins(finding.rule))
    others = len(result.findings) - pinned
    files = f"{result.files} file" + ("" if result.files == 1 else "s")
    if pinned:
        verdict = f"{pinned} statement(s) would pin the session in RDS Proxy"
    else:
        verdict = "no statement would pin the session in RDS Proxy"
    extras = []
    if others:
        extras.append(f"{others} other problem(s) above")
    if result.suppressed:
        extras.append(f"{len(result.suppressed)} allowed by a suppression comment")
    if result.errors:
        extras.append(f"{len(result.errors)} file(s) could not be read")
    return f"Checked {files}: {verdict}" + (f" ({'; '.join(extras)})" if extras else "") + "."
