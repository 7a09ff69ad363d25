"""Checking files: each query's statements through the proxy's own pinning rules, then the
suppression comments."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emulator.rdsproxy.protocol.pinning import pin_reason, pin_rule, split_statements, tokenize
from emulator.tools.sqlcheck import suppressions
from emulator.tools.sqlcheck.findings import SYNTAX_ERROR, Finding, Suppressed
from emulator.tools.sqlcheck.sources import Query, Unparsable, python_source, sql_source
from emulator.tools.sqlcheck.walk import files_to_check

# The exit codes, as ruff's: 0 nothing found, 1 findings, 2 the check itself could not be done.
CLEAN, FINDINGS, ERROR = 0, 1, 2


@dataclass
class FileCheck:
    findings: list[Finding] = field(default_factory=list)
    suppressed: list[Suppressed] = field(default_factory=list)


@dataclass
class CheckResult:
    files: int = 0
    findings: list[Finding] = field(default_factory=list)
    suppressed: list[Suppressed] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # files that could not be read

    @property
    def exit_code(self) -> int:
        if self.errors:
            return ERROR
        return FINDINGS if self.findings else CLEAN


def _pins(path: Path, query: Query) -> Iterator[Finding]:
    """One finding per statement that pins; a query over the size limit pins as a whole."""
    whole = pin_rule(query.sql)
    if whole is None:
        return
    statements = [query.sql] if whole == "too_long" else _statements(query.sql)
    for sql in statements:
        rule = pin_rule(sql)
        if rule is not None:
            yield Finding(
                path,
                query.line,
                query.column,
                rule,
                f"pins the session: {' '.join(sql.split())[:100]}",
                sql=sql,
                reason=pin_reason(sql) or "",
            )


def _statements(sql: str) -> list[str]:
    return [sql[statement[0].start : statement[-1].end] for statement in split_statements(tokenize(sql))]


def check_file(path: Path) -> FileCheck:
    """The findings of one file: a .sql file statement by statement, anything else as Python."""
    data = path.read_bytes()
    if path.suffix == ".sql":
        source = sql_source(data.decode(errors="replace"))
    else:
        try:
            source = python_source(data)
        except Unparsable as exc:
            message = f"could not parse: {exc} (line {exc.line}); its SQL was not checked"
            return FileCheck([Finding(path, exc.line, exc.column, SYNTAX_ERROR, message)])
    pinned = [(finding, query) for query in source.queries for finding in _pins(path, query)]
    outcome = suppressions.apply(path, pinned, source.comments)
    if source.unterminated is not None:
        left_open = source.unterminated
        message = (
            f"unterminated {left_open.what}: psql would read the rest of the file into it; "
            "the SQL from here on was not checked"
        )
        outcome.findings.append(Finding(path, left_open.line, left_open.column, SYNTAX_ERROR, message))
    return FileCheck(_in_order(outcome.findings), outcome.suppressed)


def _in_order(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.line, f.column))  # stable: statements stay in order


def check_paths(paths: Sequence[Path], exclude: Sequence[str] = ()) -> CheckResult:
    """Every .py and .sql file under the paths (see walk.py); each path must exist."""
    result = CheckResult()
    for path in files_to_check(paths, exclude):
        try:
            checked = check_file(path)
        except OSError as exc:
            result.errors.append(f"{path}: {exc.strerror or exc}")
            continue
        result.files += 1
        result.findings += checked.findings
        result.suppressed += checked.suppressed
    return result
