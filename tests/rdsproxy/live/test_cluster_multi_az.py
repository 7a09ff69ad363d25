"""The proxy in front of a Multi-AZ instance (a writer and a standby that is not readable): the
standby refuses connections with 57P03, so the proxy knows it as a standby, has no reader for a
read-only endpoint, and fails over to it when it is promoted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from emulator.stack.cluster import ClusterKind
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.rdsproxy import RdsProxyEmulator

from .helpers import ProxyUnderTest, wait_quiescent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def multi_az() -> Iterator[ProxyUnderTest]:
    config = StackConfig(
        database_kind=ClusterKind.MULTI_AZ,
        max_connections=30,
        pool_size=6,
        proxy_settings={"connection_borrow_timeout": 30, "proxy_endpoints": ["reads=READ_ONLY:0"]},
    )
    with EmbeddedStack(config) as stack:
        assert isinstance(stack.proxy, RdsProxyEmulator)
        yield ProxyUnderTest(stack, stack.proxy)
        wait_quiescent(stack.proxy, timeout=20)


def _one(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_the_standby_that_refuses_connections_is_known_as_a_standby(multi_az: ProxyUnderTest) -> None:
    cluster = multi_az.stack.cluster
    assert cluster is not None
    standby = next(i for i in cluster.instances if i is not cluster.writer)
    stats = multi_az.stats()
    assert stats["target_roles"] == {cluster.writer.name: "writer", standby.name: "standby"}
    assert stats["target_writer"] == cluster.writer.name


def test_a_read_only_endpoint_has_no_reader_instance_and_fails_at_once(multi_az: ProxyUnderTest) -> None:
    port = int(multi_az.emulator.endpoints()["reads"]["port"])
    with multi_az.connect(port=port) as reads, pytest.raises(psycopg.OperationalError, match="no reader DB"):
        reads.execute("SELECT 1")


def test_a_failover_to_the_standby_keeps_idle_clients_and_cancels_transactions_and_pinned_sessions(
    multi_az: ProxyUnderTest,
) -> None:
    stack = multi_az.stack
    cluster = stack.cluster
    assert cluster is not None
    idle = [multi_az.connect() for _ in range(3)]
    for conn in idle:
        assert _one(conn, "SELECT inet_server_port()") == cluster.writer.server.port
    in_transaction = multi_az.connect()
    in_transaction.execute("BEGIN")
    in_transaction.execute("SELECT 1")
    pinned = multi_az.connect()
    pinned.execute("SET work_mem = '8MB'")

    report = stack.failover()

    new_writer = cluster.instance(report.new_writer).server.port
    for conn in idle:
        assert _one(conn, "SELECT inet_server_port()") == new_writer
    # The transaction is gone with the old writer: its next statement fails, the one after runs.
    with pytest.raises(psycopg.OperationalError) as lost:
        in_transaction.execute("SELECT 1")
    # Not the fast shutdown's FATAL 57P01 (held back: the client keeps its connection).
    assert lost.value.sqlstate == "08006"
    assert _one(in_transaction, "SELECT inet_server_port()") == new_writer
    with pytest.raises(psycopg.OperationalError) as closed:
        pinned.execute("SELECT 1")
    assert closed.value.sqlstate == "08006"
    assert pinned.closed
    stats = multi_az.stats()
    assert stats["target_writer"] == report.new_writer
    for conn in [*idle, in_transaction, pinned]:
        conn.close()
    cluster.wait_rejoined()
