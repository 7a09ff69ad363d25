"""The function's SQL, checked statically: no statement in it pins an RDS Proxy session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_no_statement_in_the_function_pins_a_session() -> None:
    check = subprocess.run(
        [sys.executable, "-m", "emulator", "check-sql", "function"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
