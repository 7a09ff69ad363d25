"""Real drivers through the emulator, each logging in with an IAM token over TLS."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import ssl
import subprocess

import asyncpg
import pg8000.native
import psycopg
import psycopg2
import pytest

from .helpers import ProxyUnderTest

pytestmark = pytest.mark.integration


def test_psycopg2(proxy: ProxyUnderTest) -> None:
    conn = psycopg2.connect(**proxy.conninfo())
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT %s::int + %s", (40, 2))
            assert cur.fetchone() == (42,)
    finally:
        conn.close()


@pytest.mark.parametrize("prepare_threshold", [None, 0], ids=["no-server-prepare", "server-prepare-always"])
def test_psycopg3(proxy: ProxyUnderTest, prepare_threshold: int | None) -> None:
    with psycopg.connect(**proxy.conninfo(), prepare_threshold=prepare_threshold, autocommit=True) as conn:
        for i in range(5):
            assert conn.execute("SELECT %s::int * 2", (i,)).fetchone() == (i * 2,)
        with conn.transaction():
            assert conn.execute("SELECT %s::text", ("in a transaction",)).fetchone() == ("in a transaction",)


def test_asyncpg_with_its_statement_cache(proxy: ProxyUnderTest) -> None:
    async def run() -> list[int]:
        context = ssl.create_default_context(cafile=proxy.ca)
        conn = await asyncpg.connect(
            host="localhost",
            port=proxy.port,
            user=proxy.user,
            database=proxy.database,
            password=proxy.token(host="localhost"),
            ssl=context,
            statement_cache_size=100,
        )
        try:
            values = [await conn.fetchval("SELECT $1::int + 1", i) for i in range(5)]
            async with conn.transaction():
                values.append(await conn.fetchval("SELECT $1::int + 1", 100))
            return values
        finally:
            await conn.close()

    assert asyncio.run(run()) == [1, 2, 3, 4, 5, 101]


def test_pg8000(proxy: ProxyUnderTest) -> None:
    context = ssl.create_default_context(cafile=proxy.ca)
    conn = pg8000.native.Connection(
        proxy.user,
        host="localhost",
        port=proxy.port,
        database=proxy.database,
        password=proxy.token(host="localhost"),
        ssl_context=context,
    )
    try:
        assert conn.run("SELECT :x::int * 3", x=7) == [[21]]
        statement = conn.prepare("SELECT :y::text || '!'")
        assert statement.run(y="named") == [["named!"]]
        statement.close()
    finally:
        conn.close()


def _libpq_env(proxy: ProxyUnderTest) -> dict[str, str]:
    return {
        **os.environ,
        "PGHOST": proxy.host,
        "PGPORT": str(proxy.port),
        "PGUSER": proxy.user,
        "PGDATABASE": proxy.database,
        "PGPASSWORD": proxy.token(),
        "PGSSLMODE": "require",
    }


@pytest.mark.skipif(shutil.which("psql") is None, reason="no psql client (apt-get install postgresql-client)")
def test_psql(proxy: ProxyUnderTest) -> None:
    done = subprocess.run(
        [
            "psql",
            "-XAt",
            "-c",
            "SELECT 'through the proxy'",
            "-c",
            "SELECT count(*) FROM pg_class WHERE false",
        ],
        env=_libpq_env(proxy),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["through", "the", "proxy", "0"]


@pytest.fixture(scope="module")
def pgbench_tables(proxy: ProxyUnderTest) -> None:
    if shutil.which("pgbench") is None:
        pytest.skip("no pgbench (apt-get install postgresql-contrib or postgresql-client)")
    subprocess.run(
        ["pgbench", "-i", "-s", "1", "-q"],
        env=_libpq_env(proxy),
        capture_output=True,
        timeout=120,
        check=True,
    )


def _pgbench(proxy: ProxyUnderTest, *args: str, expected: int) -> None:
    done = subprocess.run(
        ["pgbench", "-n", *args],
        env=_libpq_env(proxy),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", done.stdout)
    assert processed is not None, done.stdout
    assert processed[1] == processed[2] == str(expected)
    assert "number of failed transactions: 0 " in done.stdout


@pytest.mark.usefixtures("pgbench_tables")
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_read_write_transactions(proxy: ProxyUnderTest, mode: str) -> None:
    # No more clients than pooled connections: pgbench prepares synchronously at a client's first
    # use, blocking its thread while other clients of that thread hold connections in BEGIN. With
    # more clients than connections that is a client-side deadlock, through RDS Proxy too.
    assert proxy.stats()["max_database_connections_allowed"] >= 4
    _pgbench(proxy, "-M", mode, "-c", "4", "-j", "2", "-t", "200", expected=800)


@pytest.mark.usefixtures("pgbench_tables")
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_more_clients_than_connections(proxy: ProxyUnderTest, mode: str) -> None:
    assert proxy.stats()["max_database_connections_allowed"] < 16
    _pgbench(proxy, "-S", "-M", mode, "-c", "16", "-j", "2", "-t", "200", expected=3200)
