"""Your schema: .sql files run against the stack's database once it exists, as its owner.

psql runs them (the server's own client, beside initdb and postgres), so a file may be anything
psql takes: a pg_dump, COPY ... FROM stdin with its data, meta-commands. Each file runs in one
transaction and stops at its first error, which names the file and line as psql reports them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from emulator.errors import ComponentError
from emulator.stack import libpq

COMPONENT = "Init SQL"


def sql_files(paths: Sequence[Path]) -> list[Path]:
    """The files to run, in order: each path a .sql file, or a directory whose .sql files run in
    name order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.sql"), key=lambda p: p.name)
            if not found:
                raise ComponentError(
                    COMPONENT,
                    f"{path} holds no .sql file",
                    "--init-sql takes a file or a directory of .sql files",
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ComponentError(
                COMPONENT, f"{path} does not exist", "--init-sql takes a file or a directory of .sql files"
            )
    return [file.resolve() for file in files]


def run_sql_files(
    psql: Path, files: Sequence[Path], *, connection: Mapping[str, str], timeout: float = 300
) -> None:
    """Run each file with psql (connection: PG* variables); the first error stops everything."""
    if not psql.is_file():
        raise ComponentError(
            COMPONENT,
            f"no psql beside the PostgreSQL server ({psql})",
            "install the PostgreSQL client (Debian/Ubuntu: apt-get install postgresql-client)",
        )
    env = libpq.program_environment({**connection, "PGAPPNAME": "local-twin-init-sql"})
    for file in files:
        done = subprocess.run(
            [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", str(file)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            # psql's own words: "psql:/path/schema.sql:12: ERROR:  syntax error at or near ..."
            errors = [line for line in done.stderr.splitlines() if line.strip()]
            raise ComponentError(
                COMPONENT,
                f"{file} failed, nothing of it was kept:\n"
                + "\n".join(f"    {line}" for line in errors[-8:]),
                "fix the statement at the file and line psql names; earlier files stay applied",
            )
