"""The static check: SQL in a handler's code that would pin, with the reason and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.paths import LAMBDA_DIR
from emulator.tools.sqlcheck import check_file, check_paths

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
    assert check_paths([LAMBDA_DIR]) == []


def test_each_pinning_statement_is_found_with_its_rule_and_fix(tmp_path: Path) -> None:
    source = tmp_path / "handler.py"
    source.write_text(SAMPLE)
    findings = {(f.line, f.rule) for f in check_file(source)}
    assert findings == {(5, "set"), (6, "advisory_lock"), (9, "temporary"), (10, "sequence")}
    by_rule = {f.rule: f for f in check_file(source)}
    assert "init_query" in by_rule["set"].fix
    assert "pg_advisory_xact_lock" in by_rule["advisory_lock"].fix
    assert "RETURNING" in by_rule["sequence"].fix
    assert 'Digest: "set search_path to $1"' in by_rule["set"].reason


def test_sql_files_are_checked_whole(tmp_path: Path) -> None:
    (tmp_path / "migration.sql").write_text("BEGIN;\nLISTEN events;\nCOMMIT;\n")
    [finding] = check_paths([tmp_path])
    assert finding.rule == "listen"
