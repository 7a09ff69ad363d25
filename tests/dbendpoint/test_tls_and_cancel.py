"""TLS ends at the endpoint (the stack's certificate); cancels reach the session's own instance."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from emulator.stack.postgres import PostgresServer
from emulator.wait import wait_until

from .conftest import TLS_HOSTNAMES, Lab, RunningEndpoint, connect, instance, topology

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_endpoint(lab: Lab, make_endpoint: Callable[..., RunningEndpoint]) -> RunningEndpoint:
    certificate = lab.ca.issue_server("dbendpoint", TLS_HOSTNAMES)
    return make_endpoint(
        topology("db-instance-1", instance("db-instance-1", lab.servers["a"], "writer")),
        tls_cert_file=str(certificate.cert_path),
        tls_key_file=str(certificate.key_path),
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_sslmode_verify_full_with_the_stacks_ca(lab: Lab, tls_endpoint: RunningEndpoint, host: str) -> None:
    with connect(
        tls_endpoint.writer_port, host=host, sslmode="verify-full", sslrootcert=str(lab.ca.ca_path)
    ) as conn:
        assert conn.pgconn.ssl_in_use
        # TLS ends at the endpoint: PostgreSQL itself sees a plain TCP connection.
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (False,)


def test_sslmode_require_without_a_certificate_is_refused_as_by_a_server_without_ssl(
    lab: Lab, make_endpoint: Callable[..., RunningEndpoint]
) -> None:
    endpoint = make_endpoint(topology("db-instance-1", instance("db-instance-1", lab.servers["a"], "writer")))
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL, but SSL was required"):
        connect(endpoint.writer_port, sslmode="require").close()
    with connect(endpoint.writer_port, sslmode="prefer") as conn:
        assert not conn.pgconn.ssl_in_use


def test_gssencmode_prefer_falls_back_as_with_postgresql(lab: Lab, tls_endpoint: RunningEndpoint) -> None:
    with connect(tls_endpoint.writer_port, sslmode="require", gssencmode="prefer") as conn:
        assert conn.pgconn.ssl_in_use


def sleeping_backends(server: PostgresServer) -> int:
    with server.admin_connection() as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def cancel_while_sleeping(
    conn: psycopg.Connection[Any], server: PostgresServer, how: str
) -> BaseException | None:
    """Start a 30-second sleep on conn, cancel it once the server runs it; the sleep's exception."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sleeping = pool.submit(conn.execute, "SELECT pg_sleep(30)")
        wait_until(lambda: sleeping_backends(server) == 1, component="the sleeping query", timeout=20)
        getattr(conn, how)()
        raised = sleeping.exception(timeout=20)
    assert isinstance(raised, psycopg.errors.QueryCanceled)
    assert raised.diag.message_primary == "canceling statement due to user request"
    return raised


@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_a_cancel_through_the_endpoint_cancels_the_query(
    lab: Lab, tls_endpoint: RunningEndpoint, how: str, sslmode: str
) -> None:
    # cancel: libpq's PQcancel (plain TCP); cancel_safe: libpq 17's cancel connection, which
    # encrypts when the session did.
    with connect(tls_endpoint.writer_port, sslmode=sslmode) as conn:
        raised = cancel_while_sleeping(conn, lab.servers["a"], how)
        assert isinstance(raised, psycopg.errors.QueryCanceled)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_cancel_reaches_the_sessions_instance_when_the_name_points_elsewhere(
    lab: Lab, make_endpoint: Callable[..., RunningEndpoint]
) -> None:
    a, b, c = (lab.servers[x] for x in "abc")
    endpoint = make_endpoint(
        topology(
            "db-instance-1",
            instance("db-instance-1", a, "writer"),
            instance("db-instance-2", b, "reader"),
            instance("db-instance-3", c, "reader"),
        )
    )
    # The reader endpoint takes b, then c; the cancel's own connection would be sent to b.
    with connect(endpoint.reader_port) as on_b, connect(endpoint.reader_port) as on_c:
        assert on_b.execute("SELECT current_setting('port')::int").fetchone() == (b.port,)
        assert on_c.execute("SELECT current_setting('port')::int").fetchone() == (c.port,)
        raised = cancel_while_sleeping(on_c, c, "cancel")
        assert isinstance(raised, psycopg.errors.QueryCanceled)
