"""A failover the proxy takes no part in: an Aurora-like cluster behind a proxy with only its default
endpoint, and no client connected while the writer moves. The proxy's own monitoring of its target
finds the new writer before the old one rejoins as a replica; writes never land on that replica."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator.stack.cluster import ClusterKind
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.wait import wait_until

from .helpers import ProxyUnderTest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxy() -> Iterator[ProxyUnderTest]:
    config = StackConfig(
        database_kind=ClusterKind.AURORA,
        replicas=1,
        max_connections=30,
        pool_size=5,
        proxy_settings={"connection_borrow_timeout": 30},
    )
    with EmbeddedStack(config) as stack:
        assert isinstance(stack.proxy, RdsProxyEmulator)
        yield ProxyUnderTest(stack, stack.proxy)


def test_a_failover_without_clients_is_followed_and_writes_reach_the_new_writer(
    proxy: ProxyUnderTest,
) -> None:
    cluster = proxy.stack.cluster
    assert cluster is not None
    # No client has used the proxy: it holds no connection to the writer whose loss it would see.
    assert proxy.stats()["pool"]["total"] == 0
    with proxy.stack.postgres.admin_connection(proxy.stack.config.database) as conn:
        conn.execute("CREATE TABLE unwatched (i int)")
        conn.execute("GRANT ALL ON unwatched TO PUBLIC")
    report = proxy.stack.failover()
    cluster.wait_rejoined()  # the old writer is a replica now, and readable

    wait_until(
        lambda: proxy.stats()["target_writer"] == report.new_writer,
        component="the proxy's writer (its monitoring)",
        timeout=20,
    )
    with proxy.connect() as conn:
        conn.execute("INSERT INTO unwatched VALUES (1)")
        row = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert row == (cluster.instance(report.new_writer).server.port, False)
