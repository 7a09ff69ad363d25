"""Which statements pin, which look-alikes must not, and the lexical traps in between."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.rdsproxy.protocol import pinning
from emulator.rdsproxy.protocol.pinning import (
    REASON_SETTINGS,
    REASON_TOO_LONG,
    PinRule,
    digest,
    pin_reason,
    plain,
    plain_query,
)
from emulator.rdsproxy.protocol.statements import copies_from_client, resets_parameters, sql_commands

pytestmark = pytest.mark.unit

PINS = [
    # SET and RESET, every spelling
    "SET search_path TO app",
    "set search_path = app, public",
    "SET SESSION statement_timeout = 5000",
    "SeT TimeZone TO 'UTC'",
    "SET NAMES 'UTF8'",
    "SET TIME ZONE 'Europe/Paris'",
    "SET ROLE reporting",
    "SET SESSION AUTHORIZATION other_user",
    "SET LOCAL statement_timeout = 1000",  # no documented exemption for PostgreSQL
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "RESET ALL",
    "reset search_path",
    "  \n\t SET jit = off",
    "/* leading comment */ SET work_mem = '64MB'",
    "-- line comment\nSET work_mem = '64MB'",
    "SELECT set_config('search_path', 'app', false)",
    "select SET_CONFIG('jit', 'off', FALSE)",
    "SELECT set_config('jit', 'off', true)",  # SET LOCAL equivalent: pins by default
    "SELECT set_config('a.b', $1, $2)",  # unknowable at parse time: pins
    # prepared statements and session state in SQL
    "PREPARE q(int) AS SELECT $1",
    "EXECUTE q(1)",
    "DEALLOCATE q",
    "DEALLOCATE ALL",
    "DEALLOCATE PREPARE ALL",
    "DISCARD ALL",
    "DISCARD PLANS",
    "DISCARD SEQUENCES",
    "DISCARD TEMP",
    # temporary objects
    "CREATE TEMP TABLE t (id int)",
    "CREATE TEMPORARY TABLE t (id int)",
    "CREATE GLOBAL TEMPORARY TABLE t (id int)",
    "CREATE LOCAL TEMP TABLE t (id int)",
    "create temp sequence s",
    "CREATE TEMP VIEW v AS SELECT 1",
    "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
    "CREATE TABLE pg_temp.t (id int)",
    "SELECT * INTO TEMP t2 FROM t",
    "CREATE TEMP TABLE t AS SELECT 1",
    # cursors, notifications, libraries
    "DECLARE c CURSOR FOR SELECT 1",
    "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1",
    "declare c binary cursor for select 1",
    "LISTEN jobs",
    'LISTEN "Jobs"',
    "LOAD 'auto_explain'",
    # sequences and session-level advisory locks
    "SELECT nextval('orders_id_seq')",
    "INSERT INTO t (id) VALUES (nextval('s'))",
    "SELECT pg_catalog.nextval('s')",
    "SELECT setval('s', 42)",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_advisory_lock_shared(1)",
    "SELECT pg_try_advisory_lock(1, 2)",
    "SELECT pg_try_advisory_lock_shared(1)",
    "SELECT pg_advisory_unlock(1)",
    "SELECT pg_advisory_unlock_all()",
    "SELECT pg_advisory_lock  (1)",
    # multi-statement strings pin when any part does
    "SELECT 1; SET x.y = 1",
    "BEGIN; SELECT 1; LISTEN ch; COMMIT",
    "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
    # a function however its name is spelled: quoted, Unicode-escaped, schema-qualified
    """SELECT "set_config"('search_path', 'x', false)""",
    """SELECT "pg_advisory_lock"(1)""",
    """SELECT U&"\\0073et_config"('search_path', 'x', false)""",
    """SELECT U&"pg_advisory_\\006cock"(1)""",
    """SELECT "pg_catalog"."nextval"('s')""",
    # statements that other statements run
    "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
    "explain (analyze, buffers) create temporary table t as select 1",
    "EXPLAIN ANALYZE SELECT set_config('x.y', '1', false)",
    "CREATE TABLE t AS SELECT pg_advisory_lock(1)",
    # DO blocks pin when their body would (AWS documents nothing for DO: the emulator's rule)
    "DO $$ BEGIN PERFORM set_config('x.y', '1', false); END $$",
    "DO $$ BEGIN SET search_path TO x; END $$",
    "DO $$ BEGIN CREATE TEMP TABLE t (a int); END $$",
    "DO LANGUAGE plpgsql $body$ BEGIN IF pg_try_advisory_lock(1) THEN NULL; END IF; END $body$",
    "DO $$ BEGIN EXECUTE 'SET search_path TO ' || 'x'; END $$",
    "DO $$ DECLARE n int; BEGIN LISTEN jobs; END $$",
    # ... as the server reads the body: escape strings' escapes decoded (hex, octal, Unicode)
    "DO E'BEGIN CREATE \\x74emp TABLE t (a int); END'",
    "DO E'BEGIN PERFORM \\163et_config(''x.y'', ''1'', false); END'",
    "DO $$ BEGIN EXECUTE E'\\u0053ET search_path TO x'; END $$",
    "DO U&'BEGIN CREATE \\0074EMP TABLE t (a int); END'",
]

DOES_NOT_PIN = [
    "SELECT 1",
    "select abalance from pgbench_accounts where aid = 1",
    "UPDATE t SET a = 1 WHERE id = 2",  # UPDATE ... SET is not the SET command
    "INSERT INTO settings (name) VALUES ('set x = 1')",
    "SELECT 'SET search_path TO x'",
    "SELECT $$ SET search_path TO x $$",
    "SELECT $fn$ LISTEN x; SET y = 1 $fn$",
    "SELECT E'it\\'s SET x'",
    'SELECT "set", "nextval" FROM t',
    "/* SET search_path = x */ SELECT 1",
    "-- SET search_path = x\nSELECT 1",
    "/* outer /* SET x = 1 */ still a comment */ SELECT 1",
    "SELECT offset_value FROM t OFFSET 5",
    "SELECT pg_advisory_xact_lock(1)",
    "SELECT pg_advisory_xact_lock_shared(1)",
    "SELECT pg_try_advisory_xact_lock(1)",
    "SELECT pg_try_advisory_xact_lock_shared(1, 2)",
    "SELECT currval('s')",  # not in the AWS list
    "SELECT current_setting('search_path')",
    "UNLISTEN jobs",
    "NOTIFY jobs, 'payload'",
    "CREATE TABLE t (id serial PRIMARY KEY)",  # the implicit nextval is invisible in the text
    "CREATE TABLE temperatures (c numeric)",
    "CREATE VIEW temp_view AS SELECT 1",
    "SELECT * FROM temp_table",
    "CALL refresh_everything()",  # procedures that change state inside are not detected
    "DO $$ BEGIN INSERT INTO t VALUES (1); END $$",
    "DO $$ BEGIN RAISE NOTICE 'reset the password, set it again'; END $$",  # words in data
    "DO $$ DECLARE c CURSOR FOR SELECT 1; BEGIN OPEN c; CLOSE c; END $$",  # a PL/pgSQL cursor variable
    "DO $$ BEGIN EXECUTE 'SELECT 1'; END $$",
    "DO E'BEGIN RAISE NOTICE ''\\x74emp''; END'",  # an escape in data
    "DO E'BEGIN PERFORM 1; END \\8'",  # a backslash before a non-octal digit stands for it
    "EXPLAIN CREATE TEMP TABLE t AS SELECT 1",  # without ANALYZE nothing runs
    "EXPLAIN (ANALYZE false) CREATE TEMP TABLE t AS SELECT 1",
    """SELECT "Set_Config"('x', 'y', false)""",  # quoted names keep their case: another function
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT a",
    "SHOW search_path",
    "EXPLAIN SELECT 1",
    "COPY t FROM STDIN",
    "VACUUM t",
    "SELECT 1 AS settings_count",
    "WITH executed AS (SELECT 1) SELECT * FROM executed",
    "CLOSE c",  # closing a cursor does not create session state
]


@pytest.mark.parametrize("sql", PINS)
def test_pins(sql: str) -> None:
    reason = pin_reason(sql)
    assert reason is not None
    assert reason.startswith("SQL changed session settings that the proxy doesn't track.")


@pytest.mark.parametrize("sql", DOES_NOT_PIN)
def test_does_not_pin(sql: str) -> None:
    assert pin_reason(sql) is None


@pytest.mark.parametrize("sql", [*PINS, *DOES_NOT_PIN, "copy t from stdin with (format csv)", "RESET ALL"])
def test_only_texts_with_nothing_to_watch_take_the_plain_fast_path(sql: str) -> None:
    # The session skips every check below for a plain text: plain() must never admit one of them.
    if _watched(sql):
        assert not plain(sql)
        assert not plain(sql)  # its answer kept, too


def _watched(sql: str) -> bool:
    """Anything the session must see a text for: a pin, COPY from the client, a parameter reset, a
    statement prepared or deallocated."""
    return (
        pin_reason(sql) is not None
        or copies_from_client(sql)
        or resets_parameters(sql)
        or bool(sql_commands(sql))
    )


def _body(sql: str) -> bytes:
    return sql.encode() + b"\0"


@pytest.mark.parametrize("sql", [*PINS, *DOES_NOT_PIN, "copy t from stdin with (format csv)", "RESET ALL"])
def test_a_query_message_is_plain_as_its_text_is(sql: str) -> None:
    # Every text of the table is ASCII and short: read as bytes, the verdict is the text's.
    assert plain_query(_body(sql)) == plain(sql)
    assert plain_query(_body(sql)) == plain(sql)  # its answer kept, too


@st.composite
def _respelled(draw: st.DrawFn) -> str:
    """A text of the tables with its letters' case changed at random, and a number or one of the two
    non-ASCII letters whose lower case is ASCII (the Kelvin sign, a dotted capital I) put in."""
    sql = draw(
        st.sampled_from([*PINS, *DOES_NOT_PIN, "copy t from stdin", "RESET ALL", "DO $$ BEGIN END $$"])
    )
    flips = draw(st.lists(st.booleans(), min_size=len(sql), max_size=len(sql)))
    sql = "".join(c.swapcase() if flip else c for c, flip in zip(sql, flips, strict=True))
    at = draw(st.integers(0, len(sql)))
    return sql[:at] + draw(st.sampled_from(["", "7", " 12 ", "\u212a", "\u0130", "é"])) + sql[at:]


@given(_respelled())
def test_a_query_message_taken_as_plain_has_nothing_to_watch(sql: str) -> None:
    if plain_query(_body(sql)):
        assert not _watched(sql), sql


def test_texts_that_differ_only_in_numbers_share_one_kept_answer() -> None:
    pinning._known_shapes.clear()
    for aid in (12, 34, 99):
        assert plain_query(_body(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"))
    assert len(pinning._known_shapes) == 1
    assert plain_query(_body("SELECT abalance FROM pgbench_accounts WHERE aid = 78901;"))
    assert len(pinning._known_shapes) == 2  # one shape per length of the number
    assert not plain_query(_body("SELECT setval('s', 1)"))
    assert not plain_query(_body("SELECT setval('s', 2)"))  # a kept "no" is kept as no
    assert len(pinning._known_shapes) == 3


def test_a_query_message_counts_its_limit_in_the_bytes_sent() -> None:
    assert plain_query(_body("SELECT '" + "é" * 8180 + "'"))  # 16369 bytes: 16 kB in characters x 4
    assert not plain_query(_body("SELECT '" + "é" * 8200 + "'"))  # 16409 bytes


@pytest.mark.parametrize("body", [b"", b"SELECT 1", b"SELECT 1\0 "])
def test_a_query_message_without_its_terminator_last_is_never_plain(body: bytes) -> None:
    assert not plain_query(body)


def test_there_are_at_least_sixty_verdicts() -> None:
    assert len(PINS) + len(DOES_NOT_PIN) >= 60


def test_a_statement_over_16384_bytes_pins_with_its_own_reason() -> None:
    sql = "SELECT '" + "x" * 16380 + "'"
    assert len(sql.encode()) > 16384
    assert pin_reason(sql) == REASON_TOO_LONG
    assert pin_reason("SELECT '" + "x" * 16000 + "'") is None


def test_the_limit_counts_bytes_not_characters() -> None:
    sql = "SELECT '" + "é" * 8200 + "'"  # 8209 characters, 16409 bytes
    assert len(sql) < 16384 < len(sql.encode())
    assert pin_reason(sql) == REASON_TOO_LONG


@pytest.mark.parametrize(
    "sql",
    ["SET LOCAL statement_timeout = 1", "SELECT set_config('a.b', 'c', true)", "SET TRANSACTION READ ONLY"],
)
def test_transaction_scoped_settings_can_be_exempted(sql: str) -> None:
    assert pin_reason(sql, PinRule(exempt_set_local=True)) is None
    assert pin_reason(sql) is not None


def test_session_scoped_settings_pin_even_with_the_exemption() -> None:
    rule = PinRule(exempt_set_local=True)
    assert pin_reason("SET statement_timeout = 1", rule) is not None
    assert pin_reason("SELECT set_config('a.b', 'c', false)", rule) is not None


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # digests seen in real RDS Proxy logs (reference, section 2.4)
        ("set search_path = \"public\"; set names 'UTF8';", "set search_path = $1; set names $2;"),
        ("set client_encoding to 'UTF8'", "set client_encoding to $1"),
        ("SET extra_float_digits = 3", "set extra_float_digits = $1"),
        ("set search_path to app,shared,public", "set search_path to $1,$2,$3"),
        (
            "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
            "select pg_advisory_unlock_all(); close all; unlisten *; reset all;",
        ),
        ("SELECT set_config('jit', 'off', false)", "select set_config($1,$2,false)"),
    ],
)
def test_digests_match_real_rds_proxy_logs(sql: str, expected: str) -> None:
    assert digest(sql) == expected
    assert pin_reason(sql) == REASON_SETTINGS.format(digest=expected)
