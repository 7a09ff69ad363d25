"""What a client does stays that client's: its unfinished work, its statements, its parameters.

Each test is a symptom that was seen through the emulator and never directly against PostgreSQL.
The proxy here has one database connection, so every client meets what the previous one left.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator

import psycopg
import psycopg.conninfo
import pytest

from emulator.rdsproxy.auth import md5_password
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend, Frontend

from .helpers import ProxyUnderTest, RawClient

pytestmark = pytest.mark.integration

NO_PARAMETERS = b"\0\0"
BIND_NO_PARAMETERS = b"\0\0" + b"\0\0" + b"\0\0"  # no formats, no values, no result formats


@pytest.fixture
def one_connection(make_proxy: Callable[..., ProxyUnderTest]) -> ProxyUnderTest:
    # floor(30 x 4 / 100) = 1 database connection, shared by every client in turn.
    return make_proxy(
        max_connections_percent=4,
        iam_auth="DISABLED",
        require_tls=False,
        client_password_auth_type="POSTGRES_MD5",
        connection_borrow_timeout=10,
    )


@pytest.fixture
def table(one_connection: ProxyUnderTest) -> Iterator[str]:
    with one_connection.stack.postgres.admin_connection(one_connection.database) as admin:
        admin.execute("DROP TABLE IF EXISTS integrity")
        admin.execute("CREATE TABLE integrity (id int)")
        admin.execute(f"GRANT ALL ON integrity TO {one_connection.user}")
    yield "integrity"
    with one_connection.stack.postgres.admin_connection(one_connection.database) as admin:
        admin.execute("DROP TABLE IF EXISTS integrity")


def client(proxy: ProxyUnderTest, **params: str) -> RawClient:
    raw = RawClient(proxy.host, proxy.port)
    raw.login_md5(proxy.user, proxy.stack.db_password, proxy.database, **params)
    return raw


def unnamed_bind_execute() -> bytes:
    return m.frame(Frontend.BIND, b"\0\0" + BIND_NO_PARAMETERS) + m.frame(Frontend.EXECUTE, b"\0\0\0\0\0")


def flush() -> bytes:
    return m.frame(Frontend.FLUSH)


def rows(proxy: ProxyUnderTest, sql: str) -> list[tuple[object, ...]]:
    with proxy.connect() as conn:
        return conn.execute(sql).fetchall()


def test_a_client_that_vanishes_mid_pipeline_never_has_its_work_committed(
    one_connection: ProxyUnderTest, table: str
) -> None:
    vanishing = client(one_connection)
    vanishing.send(m.parse_message("", f"INSERT INTO {table} VALUES (1)", NO_PARAMETERS))
    vanishing.send(unnamed_bind_execute() + flush())
    kinds = [vanishing.read_frame().kind for _ in range(3)]
    assert kinds == [Backend.PARSE_COMPLETE, Backend.BIND_COMPLETE, Backend.COMMAND_COMPLETE]
    vanishing.close()  # no Sync: PostgreSQL rolls the implicit transaction back
    assert rows(one_connection, f"SELECT count(*) FROM {table}") == [(0,)]


def test_the_next_client_is_answered_after_one_vanished_in_a_failed_pipeline(
    one_connection: ProxyUnderTest,
) -> None:
    vanishing = client(one_connection)
    vanishing.send(m.parse_message("", "SELECT 1/0", NO_PARAMETERS) + unnamed_bind_execute() + flush())
    assert vanishing.read_until(Backend.ERROR_RESPONSE)[-1].kind == Backend.ERROR_RESPONSE
    vanishing.close()  # the server now skips everything up to a Sync that will never come
    assert rows(one_connection, "SELECT 42") == [(42,)]


def test_a_client_transaction_left_open_is_rolled_back_and_the_connection_reused(
    one_connection: ProxyUnderTest, table: str
) -> None:
    before = one_connection.stats()["database_connection_requests"]
    vanishing = client(one_connection)
    vanishing.send(m.simple_query(f"BEGIN; INSERT INTO {table} VALUES (1)"))
    assert vanishing.read_until(Backend.READY_FOR_QUERY)[-1].body == b"T"
    vanishing.close()
    assert rows(one_connection, f"SELECT count(*) FROM {table}") == [(0,)]
    assert one_connection.stats()["database_connection_requests"] == before
    assert one_connection.stats()["lent_out_of_sync"] == 0


def test_a_client_never_runs_another_clients_unnamed_statement(one_connection: ProxyUnderTest) -> None:
    alice, bob = client(one_connection), client(one_connection)
    alice.send(m.parse_message("", "SELECT 'alice'", NO_PARAMETERS) + m.SYNC)
    alice.read_until(Backend.READY_FOR_QUERY)
    bob.send(m.parse_message("", "SELECT 'bob'", NO_PARAMETERS) + m.SYNC)
    bob.read_until(Backend.READY_FOR_QUERY)
    alice.send(unnamed_bind_execute() + m.SYNC)
    answer = alice.read_until(Backend.READY_FOR_QUERY)
    assert [f.body[6:] for f in answer if f.kind == Backend.DATA_ROW] == [b"alice"]
    alice.close()
    bob.close()


def test_a_simple_query_drops_the_unnamed_statement_as_postgresql_does(
    one_connection: ProxyUnderTest,
) -> None:
    alice, bob = client(one_connection), client(one_connection)
    alice.send(m.parse_message("", "SELECT 'alice'", NO_PARAMETERS) + m.SYNC)
    alice.read_until(Backend.READY_FOR_QUERY)
    alice.send(m.simple_query("SELECT 1"))  # PostgreSQL drops alice's unnamed statement here
    alice.read_until(Backend.READY_FOR_QUERY)
    bob.send(m.parse_message("", "SELECT 'bob'", NO_PARAMETERS) + m.SYNC)
    bob.read_until(Backend.READY_FOR_QUERY)
    alice.send(unnamed_bind_execute() + m.SYNC)
    error = m.parse_message_fields(alice.read_until(Backend.ERROR_RESPONSE)[-1].body)
    assert (error["C"], error["M"]) == ("26000", "unnamed prepared statement does not exist")
    alice.read_until(Backend.READY_FOR_QUERY)
    alice.close()
    bob.close()


def test_an_unknown_message_type_ends_only_its_sender_with_postgresqls_fatal(
    one_connection: ProxyUnderTest,
) -> None:
    sender = client(one_connection)
    sender.send(m.simple_query("SELECT 1"))
    sender.read_until(Backend.READY_FOR_QUERY)
    sender.send(m.frame(ord("Y"), b"whatever"))
    error = m.parse_message_fields(sender.read_until(Backend.ERROR_RESPONSE)[-1].body)
    assert (error["S"], error["C"], error["M"]) == ("FATAL", "08P01", "invalid frontend message type 89")
    assert sender.closed()
    assert rows(one_connection, "SELECT 7") == [(7,)]


def test_deallocate_all_frees_the_names_of_protocol_level_statements(one_connection: ProxyUnderTest) -> None:
    raw = client(one_connection)
    raw.send(m.parse_message("s1", "SELECT 1", NO_PARAMETERS) + m.SYNC)
    raw.read_until(Backend.READY_FOR_QUERY)
    raw.send(m.simple_query("DEALLOCATE ALL"))
    tags = [f.body for f in raw.read_until(Backend.READY_FOR_QUERY) if f.kind == Backend.COMMAND_COMPLETE]
    assert tags == [b"DEALLOCATE ALL\0"]
    raw.send(m.parse_message("s1", "SELECT 2", NO_PARAMETERS) + m.SYNC)
    assert raw.kinds_until_ready() == [Backend.PARSE_COMPLETE, Backend.READY_FOR_QUERY]
    raw.close()


def test_sql_deallocate_reaches_a_protocol_level_statement(one_connection: ProxyUnderTest) -> None:
    raw = client(one_connection)
    raw.send(m.parse_message("s1", "SELECT 1", NO_PARAMETERS) + m.SYNC)
    raw.read_until(Backend.READY_FOR_QUERY)
    raw.send(m.simple_query("DEALLOCATE s1"))
    answer = raw.read_until(Backend.READY_FOR_QUERY)
    assert [f.body for f in answer if f.kind == Backend.COMMAND_COMPLETE] == [b"DEALLOCATE\0"]
    raw.send(m.frame(Frontend.BIND, b"\0s1\0" + BIND_NO_PARAMETERS) + m.SYNC)
    error = m.parse_message_fields(raw.read_until(Backend.ERROR_RESPONSE)[-1].body)
    assert error["M"] == 'prepared statement "s1" does not exist'
    raw.read_until(Backend.READY_FOR_QUERY)
    raw.close()


def test_a_close_that_postgresql_skips_after_an_error_is_not_applied(one_connection: ProxyUnderTest) -> None:
    raw = client(one_connection)
    raw.send(m.parse_message("s1", "SELECT 'still here'", NO_PARAMETERS) + m.SYNC)
    raw.read_until(Backend.READY_FOR_QUERY)
    # The server fails the Execute; the Close after it is skipped, by PostgreSQL and so by the proxy.
    failing = m.parse_message("", "SELECT 1/0", NO_PARAMETERS) + unnamed_bind_execute()
    raw.send(failing + m.target_message(Frontend.CLOSE, "S", "s1") + m.SYNC)
    kinds = raw.kinds_until_ready()
    assert kinds[-2:] == [Backend.ERROR_RESPONSE, Backend.READY_FOR_QUERY]
    assert Backend.CLOSE_COMPLETE not in kinds
    raw.send(
        m.frame(Frontend.BIND, b"\0s1\0" + BIND_NO_PARAMETERS) + m.frame(Frontend.EXECUTE, b"\0\0\0\0\0")
    )
    raw.send(m.SYNC)
    answer = raw.read_until(Backend.READY_FOR_QUERY)
    assert [f.body[6:] for f in answer if f.kind == Backend.DATA_ROW] == [b"still here"]
    raw.close()


def test_parsing_a_name_the_client_already_uses_fails_as_in_postgresql(
    one_connection: ProxyUnderTest,
) -> None:
    raw = client(one_connection)
    raw.send(m.parse_message("s1", "SELECT 1", NO_PARAMETERS) + m.SYNC)
    raw.read_until(Backend.READY_FOR_QUERY)
    raw.send(m.parse_message("s1", "SELECT 2", NO_PARAMETERS) + m.SYNC)
    error = m.parse_message_fields(raw.read_until(Backend.ERROR_RESPONSE)[-1].body)
    assert (error["C"], error["M"]) == ("42P05", 'prepared statement "s1" already exists')
    assert error.get("R") == "StorePreparedStatement"  # PostgreSQL's own error, not a look-alike
    raw.read_until(Backend.READY_FOR_QUERY)
    raw.close()


def test_a_client_that_chose_no_parameters_gets_the_servers_defaults(one_connection: ProxyUnderTest) -> None:
    chooser = client(one_connection, extra_float_digits="0")
    chooser.send(m.simple_query("SELECT 1.0::float8/3"))
    assert b"0.333333333333333" in b"".join(f.raw for f in chooser.read_until(Backend.READY_FOR_QUERY))
    chooser.close()
    plain = client(one_connection)
    plain.send(m.simple_query("SHOW extra_float_digits"))
    answer = plain.read_until(Backend.READY_FOR_QUERY)
    assert [f.body[6:] for f in answer if f.kind == Backend.DATA_ROW] == [b"1"]
    plain.close()


def _function_call(oid: int, *text_arguments: str) -> bytes:
    body = struct.pack("!IH", oid, 0) + struct.pack("!H", len(text_arguments))
    for argument in text_arguments:
        data = argument.encode()
        body += struct.pack("!i", len(data)) + data
    return m.frame(Frontend.FUNCTION_CALL, body + struct.pack("!H", 0))


def test_a_function_call_message_to_set_config_pins(one_connection: ProxyUnderTest) -> None:
    with one_connection.stack.postgres.admin_connection() as admin:
        (oid,) = admin.execute("SELECT 'pg_catalog.set_config'::regproc::oid::int").fetchone() or (0,)
    raw = client(one_connection)
    raw.send(_function_call(oid, "search_path", "pg_catalog", "false"))
    assert raw.kinds_until_ready()[-2:] == [Backend.FUNCTION_CALL_RESPONSE, Backend.READY_FOR_QUERY]
    assert one_connection.stats()["database_connections_pinned"] == 1
    raw.close()


@pytest.mark.parametrize(
    "sql",
    [
        """SELECT "set_config"('search_path', 'pg_catalog', false)""",
        """SELECT U&"\\0073et_config"('search_path', 'pg_catalog', false)""",
        "EXPLAIN ANALYZE CREATE TEMP TABLE leaked AS SELECT 1",
    ],
    ids=["quoted", "unicode escapes", "explain analyze"],
)
def test_session_state_however_it_is_spelled_pins_and_never_leaks(
    one_connection: ProxyUnderTest, sql: str
) -> None:
    with one_connection.connect() as conn:
        conn.execute(sql)
        assert one_connection.stats()["database_connections_pinned"] == 1
    with one_connection.connect() as conn:
        assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM leaked")


_PIPELINE_THEN_KILLED = """
import os, select, sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
with conn.pipeline():
    conn.execute("INSERT INTO integrity VALUES (1)")
    pgconn = conn.pgconn
    pgconn.send_flush_request()
    pgconn.flush()
    # Wait for the INSERT's answer (it ran in PostgreSQL's implicit transaction; no Sync was sent).
    while True:
        select.select([pgconn.socket], [], [], 5)
        pgconn.consume_input()
        if not pgconn.is_busy():
            break
    assert pgconn.get_result().status == psycopg.pq.ExecStatus.COMMAND_OK
    os.kill(os.getpid(), 9)
"""


def test_a_psycopg_pipeline_killed_before_its_sync_commits_nothing(
    one_connection: ProxyUnderTest, table: str
) -> None:
    conninfo = psycopg.conninfo.make_conninfo(**one_connection.conninfo())
    killed = subprocess.run(
        [sys.executable, "-c", _PIPELINE_THEN_KILLED, conninfo], capture_output=True, timeout=60, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert rows(one_connection, f"SELECT count(*) FROM {table}") == [(0,)]


def test_psycopg_prepared_statements_survive_its_deallocate_all_after_a_rollback(
    one_connection: ProxyUnderTest,
) -> None:
    # psycopg 3 sends DEALLOCATE ALL after a ROLLBACK when it has prepared statements, then prepares
    # them again under the same names.
    with psycopg.connect(**one_connection.conninfo(), prepare_threshold=0) as conn:
        for attempt in range(3):
            assert conn.execute("SELECT %s::int + 1", (attempt,)).fetchone() == (attempt + 1,)
            conn.rollback()


def test_a_statement_is_shared_only_by_clients_whose_session_parameters_are_the_same(
    one_connection: ProxyUnderTest,
) -> None:
    # PostgreSQL reads a timestamptz constant in the TimeZone of the session that parses it: a
    # statement parsed for a client in Tokyo must not answer a client in UTC.
    query = "SELECT '2024-01-01 00:00'::timestamptz = '2024-01-01 00:00+00'"
    answers = {}
    for timezone in ("Asia/Tokyo", "UTC"):
        raw = client(one_connection, TimeZone=timezone)
        raw.send(m.parse_message("s", query, NO_PARAMETERS) + m.SYNC)
        raw.read_until(Backend.READY_FOR_QUERY)
        bind = m.frame(Frontend.BIND, b"\0s\0" + BIND_NO_PARAMETERS)
        raw.send(bind + m.frame(Frontend.EXECUTE, b"\0\0\0\0\0") + m.SYNC)
        frames = raw.read_until(Backend.READY_FOR_QUERY)
        answers[timezone] = [m.data_row_values(f.body) for f in frames if f.kind == Backend.DATA_ROW]
        raw.close()
    assert answers == {"Asia/Tokyo": [["f"]], "UTC": [["t"]]}


def test_a_client_is_told_its_startup_parameters_as_postgresql_spells_them(
    one_connection: ProxyUnderTest,
) -> None:
    raw = RawClient(one_connection.host, one_connection.port)
    welcome = raw.login_md5(
        one_connection.user, one_connection.stack.db_password, one_connection.database, DateStyle="German"
    )
    reported = dict(m.read_parameter_status(f.raw) for f in welcome if f.kind == Backend.PARAMETER_STATUS)
    assert reported["DateStyle"] == "German, DMY"
    raw.close()


def test_a_startup_parameter_postgresql_refuses_ends_the_login_as_postgresql_does(
    one_connection: ProxyUnderTest,
) -> None:
    raw = RawClient(one_connection.host, one_connection.port)
    user, password = one_connection.user, one_connection.stack.db_password
    raw.send(m.startup_message({"user": user, "database": one_connection.database, "TimeZone": "Nowhere"}))
    request = raw.read_frame()
    raw.send(m.password_message(md5_password(user, password, request.body[4:8])))
    assert raw.read_frame().kind == Backend.AUTHENTICATION  # authenticated, then the parameters fail
    error = m.parse_message_fields(raw.read_frame().body)
    assert (error["S"], error["C"]) == ("FATAL", "22023")
    assert error["M"] == 'invalid value for parameter "TimeZone": "Nowhere"'
    assert raw.closed()
