"""Suppression comments: `rds-proxy: allow RULE -- REASON` allows a rule where it stands, and says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.tools.sqlcheck import check_file

pytestmark = pytest.mark.unit


def _check(tmp_path: Path, name: str, text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str, str]]]:
    source = tmp_path / name
    source.write_text(text)
    checked = check_file(source)
    return (
        [(f.line, f.rule) for f in checked.findings],
        [(s.finding.line, s.finding.rule, s.reason) for s in checked.suppressed],
    )


def test_a_python_comment_allows_the_rule_it_names_with_its_reason(tmp_path: Path) -> None:
    findings, suppressed = _check(
        tmp_path,
        "h.py",
        'SETUP = "SET search_path TO tenant"  # rds-proxy: allow set -- a schema per tenant\n',
    )
    assert (findings, suppressed) == ([], [(1, "set", "a schema per tenant")])


def test_a_suppression_allows_only_the_rules_it_names(tmp_path: Path) -> None:
    findings, _ = _check(tmp_path, "h.py", 'Q = "LISTEN jobs"  # rds-proxy: allow set -- wrong rule\n')
    assert findings == [(1, "listen"), (1, "unused_suppression")]


def test_one_comment_may_allow_several_rules(tmp_path: Path) -> None:
    findings, suppressed = _check(
        tmp_path, "h.py", 'Q = "SET a = 1; LISTEN b"  # rds-proxy: allow set, listen -- the admin tool\n'
    )
    assert findings == []
    assert {rule for _, rule, _ in suppressed} == {"set", "listen"}


MULTI_LINE = '''\
FIRST = """
    SELECT pg_advisory_lock(1)
"""  # rds-proxy: allow advisory_lock -- on its last line
SECOND = ("SELECT pg_advisory_lock(2)"  # rds-proxy: allow advisory_lock -- on its first line
          " FROM jobs")
THIRD = """
    SELECT pg_advisory_lock(3)
"""
# rds-proxy: allow advisory_lock -- on the line after: covers nothing
'''


def test_a_suppression_covers_a_multi_line_string_from_its_first_line_to_its_last(tmp_path: Path) -> None:
    findings, suppressed = _check(tmp_path, "h.py", MULTI_LINE)
    assert [(line, rule) for line, rule, _ in suppressed] == [(1, "advisory_lock"), (4, "advisory_lock")]
    assert findings == [(6, "advisory_lock"), (9, "unused_suppression")]


SQL_FILE = """\
-- rds-proxy: allow listen -- the notifier connects directly, not through the proxy
LISTEN orders_changed;
SET work_mem = '64MB'; -- rds-proxy: allow set -- a trailing comment
SELECT 1;
LOAD 'auto_explain';
"""


def test_in_a_sql_file_a_comment_above_a_statement_or_on_its_line_allows_it(tmp_path: Path) -> None:
    findings, suppressed = _check(tmp_path, "m.sql", SQL_FILE)
    assert [(line, rule) for line, rule, _ in suppressed] == [(2, "listen"), (3, "set")]
    assert findings == [(5, "load")]


def test_a_comment_above_a_sql_statement_does_not_reach_past_the_next_one(tmp_path: Path) -> None:
    findings, _ = _check(tmp_path, "m.sql", "-- rds-proxy: allow listen -- x\nSELECT 1;\nLISTEN a;\n")
    assert findings == [(1, "unused_suppression"), (3, "listen")]


@pytest.mark.parametrize(
    ("comment", "problem"),
    [
        ("# rds-proxy: allow set", "gives no reason"),
        ("# rds-proxy: allow set --   ", "gives no reason"),
        ("# rds-proxy: allow -- no rule", "names no rule"),
        ("# rds-proxy: allow sett -- a typo", "unknown rule: sett"),
        ("# rds-proxy: ignore set -- not the verb", "write `rds-proxy: allow RULE -- REASON`"),
    ],
)
def test_a_malformed_suppression_is_a_finding_of_its_own(tmp_path: Path, comment: str, problem: str) -> None:
    source = tmp_path / "h.py"
    source.write_text(f'Q = "SET a = 1"  {comment}\n')
    findings = check_file(source).findings
    invalid = [f for f in findings if f.rule == "invalid_suppression"]
    assert len(invalid) == 1
    assert problem in invalid[0].message


@pytest.mark.parametrize(
    "comment",
    [
        "# rds-proxy: allow listen",
        "# rds-proxy: allow listen --",
        "# rds-proxy: allow listen, lisen -- a typo beside the right rule",
    ],
    ids=["no-reason", "empty-reason", "an-unknown-rule-too"],
)
def test_an_invalid_suppression_allows_nothing_so_the_pin_it_would_hide_is_reported_too(
    tmp_path: Path, comment: str
) -> None:
    """A user's `# rds-proxy: allow listen` (no reason) was reported as invalid yet hid the LISTEN."""
    findings, suppressed = _check(tmp_path, "h.py", f'cur.execute("LISTEN jobs")  {comment}\n')
    assert findings == [(1, "listen"), (1, "invalid_suppression")]
    assert suppressed == []


def test_an_invalid_suppression_above_a_sql_statement_allows_nothing_either(tmp_path: Path) -> None:
    findings, suppressed = _check(tmp_path, "m.sql", "-- rds-proxy: allow listen\nLISTEN jobs;\n")
    assert findings == [(1, "invalid_suppression"), (2, "listen")]
    assert suppressed == []
