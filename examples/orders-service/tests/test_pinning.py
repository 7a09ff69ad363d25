"""What this suite does when a change makes the function pin: a realistic one (a statement timeout
set on each new connection) and this suite's own tests run on the changed function.

The change is caught twice: statically by check-sql, and on the twin, where every test that ran
the function fails with RDS Proxy's reason and the statement's digest.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
CONNECTED = "        _connection = _connect()\n"
SET_TIMEOUT = "        _connection.execute(\"SET statement_timeout = '2s'\")\n"


@pytest.fixture
def changed_project(pytester: pytest.Pytester) -> Path:
    """The project with its function changed to set a statement timeout on each new connection."""
    for part in ("function", "schema"):
        shutil.copytree(PROJECT / part, pytester.path / part)
    shutil.copy(PROJECT / "pyproject.toml", pytester.path)
    shutil.copy(PROJECT / "tests" / "test_orders.py", pytester.path)
    function = pytester.path / "function" / "orders.py"
    source = function.read_text()
    assert source.count(CONNECTED) == 1
    function.write_text(source.replace(CONNECTED, CONNECTED + SET_TIMEOUT))
    return pytester.path


def test_check_sql_finds_the_statement_that_pins(changed_project: Path) -> None:
    check = subprocess.run(
        [sys.executable, "-m", "emulator", "check-sql", "function"],
        cwd=changed_project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 1
    assert "SET statement_timeout = '2s'" in check.stdout


def test_the_suite_fails_with_rds_proxy_s_reason_and_the_statement_s_digest(
    pytester: pytest.Pytester, changed_project: Path
) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_orders.py")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_an_order_added_is_listed_after_the_seeded_one _*",
            "RDS Proxy pinned 1 session during this test (twin):",
            "  clientConnection=* dbConnection=*: SQL changed session settings that the proxy doesn't track."
            " Consider moving session configuration to the proxy's initialization query.",
            '    Digest: "set statement_timeout = $1"',
            "*",
            'If the test means to pin, mark it: @pytest.mark.twin_allow_pin("set statement_timeout")',
        ],
        consecutive=True,
    )
