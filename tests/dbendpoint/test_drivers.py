"""Every driver the kit supports, through the writer endpoint with TLS ended there."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import asyncpg
import pg8000.native
import psycopg2
import pytest

from .conftest import (
    APP_DATABASE,
    APP_PASSWORD,
    APP_USER,
    TLS_HOSTNAMES,
    Lab,
    RunningEndpoint,
    instance,
    topology,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_endpoint(lab: Lab, make_endpoint: Callable[..., RunningEndpoint]) -> RunningEndpoint:
    certificate = lab.ca.issue_server("dbendpoint-drivers", TLS_HOSTNAMES)
    return make_endpoint(
        topology("db-instance-1", instance("db-instance-1", lab.servers["a"], "writer")),
        tls_cert_file=str(certificate.cert_path),
        tls_key_file=str(certificate.key_path),
    )


def test_psycopg2_verify_full(lab: Lab, tls_endpoint: RunningEndpoint) -> None:
    conn = psycopg2.connect(
        host="localhost",
        port=tls_endpoint.writer_port,
        user=APP_USER,
        password=APP_PASSWORD,
        dbname=APP_DATABASE,
        sslmode="verify-full",
        sslrootcert=str(lab.ca.ca_path),
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT current_setting('port')::int")
            assert cursor.fetchone() == (lab.servers["a"].port,)
    finally:
        conn.close()


def test_pg8000_with_tls(lab: Lab, tls_endpoint: RunningEndpoint) -> None:
    context = ssl.create_default_context(cafile=str(lab.ca.ca_path))
    conn = pg8000.native.Connection(
        APP_USER,
        host="localhost",
        port=tls_endpoint.writer_port,
        password=APP_PASSWORD,
        database=APP_DATABASE,
        ssl_context=context,
    )
    try:
        assert conn.run("SELECT current_setting('port')::int") == [[lab.servers["a"].port]]
    finally:
        conn.close()


def test_asyncpg_with_tls_and_its_cancel_on_timeout(lab: Lab, tls_endpoint: RunningEndpoint) -> None:
    async def scenario() -> None:
        context = ssl.create_default_context(cafile=str(lab.ca.ca_path))
        conn = await asyncpg.connect(
            host="localhost",
            port=tls_endpoint.writer_port,
            user=APP_USER,
            password=APP_PASSWORD,
            database=APP_DATABASE,
            ssl=context,
        )
        try:
            assert await conn.fetchval("SELECT current_setting('port')::int") == lab.servers["a"].port
            # On a timeout asyncpg sends a CancelRequest and waits for the query to end: only a
            # cancel that reached the backend lets the next query run before the sleep would end.
            with pytest.raises(TimeoutError):
                await conn.fetchval("SELECT pg_sleep(30)", timeout=0.5)
            assert await asyncio.wait_for(conn.fetchval("SELECT 1"), 10) == 1
        finally:
            await conn.close()

    asyncio.run(scenario())
