"""The check: SQL in a project's code that would pin, with RDS Proxy's reason and a fix, and what
makes the check fail (findings) or not run (errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.paths import LAMBDA_DIR
from emulator.tools.sqlcheck import check_file, check_paths
from emulator.tools.sqlcheck.check import CLEAN, ERROR, FINDINGS

pytestmark = pytest.mark.unit


SAMPLE = '''
import psycopg2

QUERY = "SELECT id FROM orders WHERE id = %s"
SETUP = "SET search_path TO tenant_a"                      # line 5
LOCK = """
    SELECT pg_advisory_lock(%s)
"""
TEMP = f"CREATE TEMP TABLE staging_{1} AS SELECT 1"        # line 9
NEXT = "select nextval('orders_id_seq')"
NOT_SQL = "set the table for dinner"
XACT = "SELECT pg_advisory_xact_lock(%s)"
'''


def test_the_kits_own_handler_has_nothing_that_pins() -> None:
    result = check_paths([LAMBDA_DIR])
    assert (result.files, result.findings, result.exit_code) == (2, [], CLEAN)  # index.py, probe.py


def test_each_pinning_statement_is_found_with_its_rule_and_fix(tmp_path: Path) -> None:
    source = tmp_path / "handler.py"
    source.write_text(SAMPLE)
    findings = check_file(source).findings
    assert [(f.line, f.column, f.rule) for f in findings] == [
        (5, 9, "set"),
        (6, 8, "advisory_lock"),
        (9, 8, "temporary"),
        (10, 8, "sequence"),
    ]
    by_rule = {f.rule: f for f in findings}
    assert "init_query" in by_rule["set"].fix
    assert "pg_advisory_xact_lock" in by_rule["advisory_lock"].fix
    assert "RETURNING" in by_rule["sequence"].fix
    assert 'Digest: "set search_path to $1".' in by_rule["set"].reason


def test_a_python_string_of_several_statements_reports_each_that_pins(tmp_path: Path) -> None:
    source = tmp_path / "handler.py"
    source.write_text('BATCH = "SELECT 1; SET a = 1; LISTEN jobs"\n')
    findings = check_file(source).findings
    assert [(f.line, f.rule, f.sql) for f in findings] == [
        (1, "set", "SET a = 1"),
        (1, "listen", "LISTEN jobs"),
    ]
    assert 'Digest: "listen jobs"' in findings[1].reason


def test_a_python_string_over_the_size_limit_pins_once_as_a_whole(tmp_path: Path) -> None:
    source = tmp_path / "handler.py"
    source.write_text(f'BIG = "SELECT 1; SELECT {"1, " * 6000}1"\n')
    [finding] = check_file(source).findings
    assert finding.rule == "too_long"


def test_a_sql_file_is_reported_statement_by_statement_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "migration.sql").write_text(
        "BEGIN;\nLISTEN events;\nCREATE TEMP TABLE scratch (id int);\n\n"
        "SELECT 1; SET work_mem = '64MB';\nCOMMIT;\n"
    )
    result = check_paths([tmp_path])
    assert [(f.line, f.column, f.rule, f.sql) for f in result.findings] == [
        (2, 1, "listen", "LISTEN events"),
        (3, 1, "temporary", "CREATE TEMP TABLE scratch (id int)"),
        (5, 11, "set", "SET work_mem = '64MB'"),
    ]
    assert 'Digest: "set work_mem = $1"' in result.findings[2].reason


def test_a_python_file_with_a_syntax_error_is_a_finding_and_the_others_are_still_checked(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken.py").write_text("x = 1\ndef broken(:\n    pass\n")
    (tmp_path / "fine.py").write_text('Q = "LISTEN jobs"\n')
    result = check_paths([tmp_path])
    assert [(f.path.name, f.line, f.rule) for f in result.findings] == [
        ("broken.py", 2, "syntax_error"),
        ("fine.py", 1, "listen"),
    ]
    assert result.findings[0].message == "could not parse: invalid syntax (line 2); its SQL was not checked"
    assert (result.files, result.exit_code) == (2, FINDINGS)


def test_a_sql_file_that_leaves_a_quote_open_is_a_syntax_error_where_it_opens(tmp_path: Path) -> None:
    (tmp_path / "broken.sql").write_text("LISTEN early;\nUPDATE t SET name = 'x;\nLISTEN in_the_string;\n")
    result = check_paths([tmp_path])
    assert [(f.line, f.column, f.rule) for f in result.findings] == [
        (1, 1, "listen"),
        (2, 21, "syntax_error"),
    ]
    assert result.findings[1].message == (
        "unterminated quoted string: psql would read the rest of the file into it; "
        "the SQL from here on was not checked"
    )
    assert result.exit_code == FINDINGS


def test_a_file_that_cannot_be_read_is_an_error_not_a_clean_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreadable = tmp_path / "secret.py"
    unreadable.write_text('Q = "SELECT 1"\n')
    (tmp_path / "other.py").write_text('Q = "LISTEN jobs"\n')
    read_bytes = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path.name == "secret.py":
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    # As root (CI runs so) no file mode keeps a file from being read: refuse it here instead.
    monkeypatch.setattr(Path, "read_bytes", refuse)
    result = check_paths([tmp_path])
    assert result.errors == [f"{unreadable}: Permission denied"]
    assert [f.path.name for f in result.findings] == ["other.py"]
    assert (result.files, result.exit_code) == (1, ERROR)
