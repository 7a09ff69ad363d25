"""Golden cases from real drivers: what pins through RDS Proxy pins here, with the same reason."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
import sys
from collections.abc import Callable

import asyncpg
import psycopg
import psycopg2
import pytest

from emulator.rdsproxy import texts
from emulator.rdsproxy.protocol.pinning import REASON_SETTINGS
from tests.support.inprocess import InProcessEnvironment, function_environment

from .helpers import ProxyUnderTest

pytestmark = pytest.mark.integration


def _pin_lines(proxy: ProxyUnderTest, client: int | None = None) -> list[str]:
    lines = [
        line
        for line in proxy.emulator.log_path.read_text().splitlines()
        if "The client session was pinned" in line
    ]
    return [line for line in lines if client is None or f"[clientConnection={client}]" in line]


def test_asyncpgs_pool_reset_query_pins_with_its_digest(proxy: ProxyUnderTest) -> None:
    async def borrow_and_return() -> int:
        context = ssl.create_default_context(cafile=proxy.ca)
        pool = await asyncpg.create_pool(
            host="localhost",
            port=proxy.port,
            user=proxy.user,
            database=proxy.database,
            password=proxy.token(host="localhost"),
            ssl=context,
            min_size=1,
            max_size=1,
        )
        try:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
            # Releasing ran the pool's reset query on the still-open connection.
            pinned: int = proxy.stats()["database_connections_pinned"]
            return pinned
        finally:
            await pool.close()

    assert asyncio.run(borrow_and_return()) == 1
    expected = REASON_SETTINGS.format(
        digest="select pg_advisory_unlock_all(); close all; unlisten *; reset all;"
    )
    assert any(line.endswith(expected) for line in _pin_lines(proxy))


def test_psycopg3_deallocate_all_after_a_rollback_pins(proxy: ProxyUnderTest) -> None:
    with psycopg.connect(**proxy.conninfo(), prepare_threshold=0) as conn:
        conn.execute("SELECT %s::int", (1,))  # prepared on the server
        assert proxy.stats()["database_connections_pinned"] == 0
        conn.rollback()  # psycopg then clears its cache with DEALLOCATE ALL (psycopg#1105)
        assert proxy.stats()["database_connections_pinned"] == 1
        # The session goes on, re-preparing on its pinned connection.
        assert conn.execute("SELECT %s::int", (2,)).fetchone() == (2,)
        conn.rollback()
    expected = REASON_SETTINGS.format(digest="deallocate all")
    assert any(line.endswith(expected) for line in _pin_lines(proxy))


def test_libpq_options_are_refused_at_startup(proxy: ProxyUnderTest) -> None:
    with pytest.raises(psycopg2.OperationalError) as caught:
        psycopg2.connect(**proxy.conninfo(), options="-c search_path=app").close()
    assert texts.COMMAND_LINE_OPTIONS in str(caught.value)


def test_a_prisma_style_search_path_pins(proxy: ProxyUnderTest) -> None:
    with proxy.connect() as conn:
        conn.execute("set search_path = \"public\"; set names 'UTF8';")
        assert proxy.stats()["database_connections_pinned"] == 1
    expected = REASON_SETTINGS.format(digest="set search_path = $1; set names $2;")
    assert any(line.endswith(expected) for line in _pin_lines(proxy))


def test_the_kits_own_handler_never_pins(proxy: ProxyUnderTest) -> None:
    before = len(_pin_lines(proxy))
    with function_environment(proxy.stack.handler_environment(proxy.emulator)):
        environment = InProcessEnvironment()
        try:
            for _ in range(5):
                response = environment.invoke({"sleep_ms": 1})
                assert response["ok"], response
                assert proxy.stats()["database_connections_pinned"] == 0
        finally:
            environment.shutdown()
    assert len(_pin_lines(proxy)) == before


def test_sessions_that_never_pin_keep_multiplexing_while_others_are_pinned(proxy: ProxyUnderTest) -> None:
    cap = proxy.stats()["max_database_connections_allowed"]
    pinned = [proxy.connect() for _ in range(cap - 1)]
    try:
        for conn in pinned:
            conn.execute("SET application_name = 'pinned'")
        assert proxy.stats()["database_connections_pinned"] == cap - 1
        # One connection is left for everyone else, and it is enough for many clients in turn.
        others = [proxy.connect() for _ in range(6)]
        for _ in range(3):
            for conn in others:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        for conn in others:
            conn.close()
        assert proxy.stats()["database_connections"] <= cap
    finally:
        for conn in pinned:
            conn.close()


def test_the_report_summarises_a_real_run(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    proxy = make_proxy(name="report-proxy", max_connections_percent=10)
    for _ in range(3):
        with proxy.connect() as conn:
            conn.execute("SET search_path TO app")
    with proxy.connect() as conn:
        conn.execute("SELECT pg_advisory_lock(42)")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "emulator",
            "report",
            "--log",
            str(proxy.emulator.log_path),
            "--stats",
            f"http://127.0.0.1:{proxy.emulator.stats_port}/stats",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert re.search(r"│\s+3 │ SQL changed session settings.*│ set search_path to \$1\b", done.stdout)
    assert re.search(r"│\s+1 │ SQL changed session settings.*│ select pg_advisory_lock\(\$1\)", done.stdout)
    assert re.search(r"sessions pinned\s+│\s+4", done.stdout)
    assert "borrow latency p50 / p99 / max" in done.stdout
