"""Through the writer endpoint a session is the direct session: same results, errors, notices and
ParameterStatus, with psycopg 3 and with psql."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from .conftest import APP_DATABASE, APP_PASSWORD, APP_USER, Lab, RunningEndpoint, connect, instance, topology

pytestmark = pytest.mark.integration

# What PostgreSQL 15 reports in ParameterStatus.
REPORTED = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
]

SCRIPT = [
    "SELECT 1 AS one, 'two'::text AS two, NULL::int AS nothing",
    "CREATE TEMP TABLE t (id int PRIMARY KEY, note text)",
    "INSERT INTO t SELECT n, repeat('x', n) FROM generate_series(1, 200) AS n",
    "SELECT count(*), sum(length(note)) FROM t",
    "INSERT INTO t VALUES (1, 'again')",
    "SELECT 1 / 0",
    "SELECT * FROM no_such_table",
    "DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; END $$",
    "SET application_name = 'through-the-endpoint'",
    "SET TimeZone = 'Europe/Paris'",
    "BEGIN",
    "SELECT txid_current() > 0",
    "SELECT missing_column FROM t",
    "SELECT 1",
    "ROLLBACK",
    # Four megabytes in one row: the splice's backpressure, both ways.
    "SELECT md5(repeat('y', 4 * 1024 * 1024)), length(repeat('y', 4 * 1024 * 1024))",
    "SELECT length(%s::text)",
]


def run_script(conn: psycopg.Connection[tuple[Any, ...]]) -> list[Any]:
    notices: list[str] = []
    conn.add_notice_handler(
        lambda diag: notices.append(f"{diag.severity} {diag.sqlstate} {diag.message_primary}")
    )
    outcome: list[Any] = []
    big = "z" * (3 * 1024 * 1024)
    for statement in SCRIPT:
        try:
            cursor = conn.execute(statement, (big,) if "%s" in statement else None)
            rows = cursor.fetchall() if cursor.description else None
            names = [column.name for column in cursor.description or []]
            outcome.append(("ok", statement, cursor.statusmessage, names, rows))
        except psycopg.Error as exc:
            outcome.append(
                ("error", statement, exc.diag.severity, exc.diag.sqlstate, exc.diag.message_primary)
            )
        outcome.append(("status", conn.info.transaction_status.name, list(notices)))
        notices.clear()
        outcome.append({name: conn.info.parameter_status(name) for name in REPORTED})
    return outcome


def test_a_session_through_the_writer_endpoint_is_the_direct_session(
    lab: Lab, make_endpoint: Callable[..., RunningEndpoint]
) -> None:
    a = lab.servers["a"]
    endpoint = make_endpoint(topology("db-instance-1", instance("db-instance-1", a, "writer")))
    with connect(a.port) as direct:
        expected = run_script(direct)
    with connect(endpoint.writer_port) as through:
        seen = run_script(through)
    assert seen == expected
    # The script met errors, notices and parameter changes: the comparison compared something.
    assert any(step[0] == "error" for step in expected if isinstance(step, tuple))
    assert any(step[2] for step in expected if isinstance(step, tuple) and step[0] == "status")


def login_failure(port: int, **extra: Any) -> str:
    with pytest.raises(psycopg.OperationalError) as raised:
        connect(port, **extra).close()
    # libpq names the port it tried; the rest is the server's own words.
    return re.sub(r"port \d+", "port N", str(raised.value))


@pytest.mark.parametrize(
    "wrong",
    [
        {"password": "wrong"},
        {"dbname": "nosuchdb"},
        {"user": "nosuchuser"},
        {"options": "-c nosuch.setting=1 -c work_mem=x"},
    ],
)
def test_a_refused_login_reads_as_the_servers_own(
    lab: Lab, make_endpoint: Callable[..., RunningEndpoint], wrong: dict[str, str]
) -> None:
    a = lab.servers["a"]
    endpoint = make_endpoint(topology("db-instance-1", instance("db-instance-1", a, "writer")))
    assert login_failure(endpoint.writer_port, **wrong) == login_failure(a.port, **wrong)


def psql(port: int, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", APP_USER, "-d", APP_DATABASE, "-c", command],
        env={**os.environ, "PGPASSWORD": APP_PASSWORD, "PGSSLMODE": "prefer", "PGCONNECT_TIMEOUT": "10"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_psql_prints_the_same_through_the_writer_endpoint(
    lab: Lab, make_endpoint: Callable[..., RunningEndpoint]
) -> None:
    a = lab.servers["a"]
    endpoint = make_endpoint(topology("db-instance-1", instance("db-instance-1", a, "writer")))
    command = "SELECT n, n * n AS square FROM generate_series(1, 5) AS n; SELECT 1/0;"
    direct, through = psql(a.port, command), psql(endpoint.writer_port, command)
    assert (through.returncode, through.stdout, through.stderr) == (
        direct.returncode,
        direct.stdout,
        direct.stderr,
    )
    assert "square" in direct.stdout
    assert "division by zero" in direct.stderr
