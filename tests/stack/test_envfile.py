from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from emulator.stack.envfile import format_env, parse_env, write_env_file

pytestmark = pytest.mark.unit

VALUES = {
    "PGHOST": "127.0.0.1",
    "PGPASSWORD": "a b'c\"$d",
    "DB_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:local-twin/db-credentials-AbCdEf",
    "EMPTY": "",
}


def test_values_survive_a_round_trip() -> None:
    assert parse_env(format_env(VALUES)) == VALUES


def test_a_shell_that_sources_the_file_sees_the_same_values(tmp_path: Path) -> None:
    path = tmp_path / "stack.env"
    write_env_file(path, VALUES)
    script = f'set -a; . "{path}"; set +a; printf "%s\\n" "$PGPASSWORD" "$DB_SECRET_ARN"'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [VALUES["PGPASSWORD"], VALUES["DB_SECRET_ARN"]]


def test_the_file_is_private_because_it_holds_a_password(tmp_path: Path) -> None:
    path = tmp_path / "stack.env"
    write_env_file(path, VALUES)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_names_that_are_not_variables_are_refused() -> None:
    with pytest.raises(ValueError, match="not an environment variable name"):
        format_env({"bad-name": "x"})
