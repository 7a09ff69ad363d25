"""The same SQL scenarios directly against PostgreSQL and through the emulator: identical results.

Each scenario gets its own table names per target ({t}), so the two runs never see each other.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from .helpers import ProxyUnderTest

pytestmark = pytest.mark.integration

Observation = tuple[Any, ...]


def _run(conn: psycopg.Connection[Any], statements: list[str], table: str, binary: bool) -> list[Observation]:
    seen: list[Observation] = []
    for sql in statements:
        try:
            cur = conn.execute(sql.format(t=table), binary=binary)
        except psycopg.Error as exc:
            seen.append(
                (
                    "error",
                    exc.sqlstate,
                    exc.diag.message_primary.replace(table, "{t}") if exc.diag.message_primary else None,
                )
            )
            continue
        description = [(c.name, c.type_code) for c in cur.description] if cur.description else None
        rows = cur.fetchall() if cur.description else None
        seen.append((cur.statusmessage, description, rows, conn.info.transaction_status.name))
    return seen


SCENARIOS: dict[str, list[str]] = {
    "ddl_and_dml": [
        "CREATE TABLE {t} (id serial PRIMARY KEY, name text NOT NULL, doc jsonb, n numeric(12,3))",
        "INSERT INTO {t} (name, doc, n) VALUES ('a', '{{\"k\": [1, 2]}}', 1.5), ('b', NULL, -2)"
        " RETURNING id, name",
        "UPDATE {t} SET n = n * 2 WHERE name = 'a' RETURNING n",
        "DELETE FROM {t} WHERE name = 'b'",
        "SELECT id, name, doc, n FROM {t} ORDER BY id",
        "ALTER TABLE {t} ADD COLUMN flag boolean DEFAULT true",
        "SELECT * FROM {t}",
        "DROP TABLE {t}",
    ],
    "errors_inside_transactions": [
        "CREATE TABLE {t} (id int PRIMARY KEY)",
        "BEGIN",
        "INSERT INTO {t} VALUES (1)",
        "SELECT 1 / 0",
        "SELECT 1",
        "ROLLBACK",
        "SELECT count(*) FROM {t}",
        "BEGIN",
        "INSERT INTO {t} VALUES (1)",
        "SAVEPOINT s",
        "INSERT INTO {t} VALUES (1)",
        "ROLLBACK TO SAVEPOINT s",
        "INSERT INTO {t} VALUES (2)",
        "COMMIT",
        "SELECT id FROM {t} ORDER BY id",
        "INSERT INTO {t} VALUES (2)",
        "DROP TABLE {t}",
    ],
    "unicode_and_nulls": [
        "SELECT 'ünïcødé ✓ 日本語 🐘' AS u, NULL::text AS nothing, '' AS empty, NULL::int AS n",
        "SELECT chr(8364), length('🐘'), octet_length('🐘')",
        "SELECT ARRAY[NULL, 'x', 'ÿ']::text[] AS a, '{{\"ключ\": null}}'::jsonb AS j",
    ],
    "types": [
        "SELECT 1::int2, 2::int4, 3::int8, 1.25::float4, 2.5::float8, 12345.6789::numeric, true, 'x'::bytea",
        "SELECT '2026-01-02 03:04:05+00'::timestamptz, '2026-01-02'::date, '1 day 2 hours'::interval",
        "SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '192.168.0.1/24'::inet, int4range(1, 10)",
    ],
    "multi_statement_query": [
        "SELECT 1 AS first; SELECT 2 AS second",
        "CREATE TABLE {t} (x int); INSERT INTO {t} VALUES (1), (2); SELECT sum(x) FROM {t}",
        "DROP TABLE {t}",
    ],
}


@pytest.fixture(scope="module")
def targets(proxy: ProxyUnderTest) -> dict[str, Callable[[], psycopg.Connection[Any]]]:
    stack = proxy.stack
    direct = {
        "host": stack.postgres.host,
        "port": stack.postgres.port,
        "user": proxy.user,
        "dbname": proxy.database,
        "password": stack.db_password,
        "sslmode": "require",
    }
    return {
        "direct": lambda: psycopg.connect(**direct, autocommit=True),
        "emulator": proxy.connect,
    }


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_gives_identical_results(
    targets: dict[str, Callable[[], psycopg.Connection[Any]]], scenario: str, binary: bool
) -> None:
    results = {}
    for name, connect in targets.items():
        table = f"diff_{scenario}_{name}_{uuid.uuid4().hex[:8]}"
        with connect() as conn:
            results[name] = _run(conn, SCENARIOS[scenario], table, binary)
    assert results["emulator"] == results["direct"]


def test_binary_parameters_round_trip_identically(
    targets: dict[str, Callable[[], psycopg.Connection[Any]]],
) -> None:
    params = (
        b"\x00\x01\xff" * 1000,
        2**40,
        3.25,
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        [1, None, 3],
        None,
    )
    sql = "SELECT %b::bytea, %b::int8, %b::float8, %b::uuid, %b::int[], %b::text"
    results = {}
    for name, connect in targets.items():
        with connect() as conn:
            results[name] = conn.execute(sql, params, binary=True).fetchone()
    assert results["emulator"] == results["direct"] == params


def test_large_rows_arrive_identically(targets: dict[str, Callable[[], psycopg.Connection[Any]]]) -> None:
    digests = {}
    for name, connect in targets.items():
        with connect() as conn:
            rows = conn.execute(
                "SELECT g, repeat(md5(g::text), 50000) FROM generate_series(1, 4) AS g"
            ).fetchall()
        digests[name] = hashlib.sha256(repr(rows).encode()).hexdigest()
    assert digests["emulator"] == digests["direct"]


def test_copy_in_and_out_give_identical_data(
    targets: dict[str, Callable[[], psycopg.Connection[Any]]],
) -> None:
    outputs = {}
    for name, connect in targets.items():
        table = f"diff_copy_{name}_{uuid.uuid4().hex[:8]}"
        with connect() as conn:
            conn.execute(f"CREATE TABLE {table} (id int, note text)")
            with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                for i in range(2000):
                    copy.write_row((i, f"row {i} ✓" if i % 7 else None))
            data = bytearray()
            with conn.cursor().copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
                for chunk in copy:
                    data += chunk
            conn.execute(f"DROP TABLE {table}")
        outputs[name] = bytes(data)
    assert outputs["emulator"] == outputs["direct"]
    assert outputs["direct"].count(b"\n") == 2000


def test_notifications_reach_a_listener(targets: dict[str, Callable[[], psycopg.Connection[Any]]]) -> None:
    received = {}
    for name, connect in targets.items():
        with connect() as listener, connect() as sender:
            listener.execute("LISTEN diff_channel")
            sender.execute("NOTIFY diff_channel, 'hello ✓'")
            listener.execute("SELECT 1")  # the notification arrives with the next response
            received[name] = [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
    assert received["emulator"] == received["direct"] == [("diff_channel", "hello ✓")]
