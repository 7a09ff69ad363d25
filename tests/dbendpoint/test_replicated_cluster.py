"""The endpoints in front of a real replicated cluster (streaming replication) through a failover:
the reader endpoint reaches the replicas, the writer endpoint's sessions drop with the old writer,
and new connections reach the new writer only after the DNS TTL."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import psycopg
import pytest

from emulator.dbendpoint.component import DatabaseEndpoint
from emulator.dbendpoint.settings import EndpointSettings
from emulator.stack.cluster import ClusterKind, ClusterSettings, ReplicatedCluster
from emulator.stack.postgres import PostgresSettings, find_postgres_binaries
from emulator.stack.process import hand_over, service_user
from emulator.wait import wait_until

from .conftest import APP_DATABASE, APP_PASSWORD, APP_USER, Lab, connect

pytestmark = pytest.mark.integration

TTL = 2.0
# Replica lag is real: a write shows on a replica within this, not at once.
LAG_DEADLINE = 10.0


@pytest.fixture
def cluster(lab: Lab) -> Iterator[ReplicatedCluster]:
    workdir = lab.workdir / "cluster"
    workdir.mkdir()
    hand_over(workdir, service_user())
    # The old writer stays fenced (stopped) after the failover: connections still sent to its address
    # are refused, as while AWS's DNS still names it.
    settings = ClusterSettings(ClusterKind.AURORA, identifier="db", replicas=2, rejoin_old_writer=False)
    with ReplicatedCluster(
        workdir,
        find_postgres_binaries(),
        PostgresSettings(max_connections=20),
        settings,
        user=service_user(),
        certificate=None,
        superuser_password=secrets.token_urlsafe(12),
    ) as running:
        running.writer.server.create_app_database(database=APP_DATABASE, user=APP_USER, password=APP_PASSWORD)
        # The replicas were copied before the application's database existed: it reaches them by
        # replication, a moment later (a test that read them at once failed with "database does not
        # exist" once).
        for replica in running.instances[1:]:
            wait_until(
                lambda name=replica.name: _has_app_database(running, name),
                component=f"database {APP_DATABASE} on {replica.name}",
                timeout=LAG_DEADLINE,
            )
        yield running


def _has_app_database(cluster: ReplicatedCluster, name: str) -> bool:
    with cluster.connect(name) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (APP_DATABASE,)).fetchone()
    return row is not None


@pytest.fixture
def endpoint(lab: Lab, cluster: ReplicatedCluster) -> Iterator[DatabaseEndpoint]:
    assert cluster.topology_path is not None
    process = DatabaseEndpoint(
        lab.workdir / "cluster-dbendpoint",
        EndpointSettings(topology_file=str(cluster.topology_path), dns_ttl_seconds=TTL),
    )
    process.start()
    yield process
    process.stop()


def recovery_and_port(port: int) -> tuple[bool, int]:
    with connect(port) as conn:
        row = conn.execute("SELECT pg_is_in_recovery(), current_setting('port')::int").fetchone()
    assert row is not None
    return bool(row[0]), int(row[1])


def reaches_writer(port: int) -> bool:
    try:
        return recovery_and_port(port)[0] is False
    except psycopg.OperationalError:
        return False


def test_reader_endpoint_reaches_the_replicas_and_the_writer_endpoint_follows_a_failover(
    cluster: ReplicatedCluster, endpoint: DatabaseEndpoint
) -> None:
    writer, *replicas = cluster.instances
    assert endpoint.reader_port is not None
    with connect(endpoint.writer_port) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        conn.execute("INSERT INTO orders VALUES (1)")
    assert recovery_and_port(endpoint.writer_port) == (False, writer.server.port)
    # The reader endpoint: the two replicas in turn, each in recovery.
    seen = [recovery_and_port(endpoint.reader_port) for _ in range(2)]
    assert sorted(seen) == sorted((True, replica.server.port) for replica in replicas)

    def replicated() -> bool:
        with connect(endpoint.reader_port) as conn:
            return conn.execute("SELECT count(*) FROM orders").fetchone() == (1,)

    wait_until(replicated, component="the row on the replicas", timeout=LAG_DEADLINE)
    with connect(endpoint.reader_port) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("INSERT INTO orders VALUES (2)")

    idle = connect(endpoint.writer_port)
    report = cluster.failover()
    assert cluster.topology_path is not None
    changed_at = json.loads(cluster.topology_path.read_text())["changed_at"]
    # The session on the old writer is gone with it.
    with pytest.raises(psycopg.OperationalError):
        idle.execute("SELECT 1")
    idle.close()
    # Until the TTL has passed, the name still points at the fenced writer: nothing answers there.
    assert not reaches_writer(endpoint.writer_port)
    assert time.time() - changed_at < TTL, "the check came too late to see the delay"
    wait_until(lambda: reaches_writer(endpoint.writer_port), component="the new writer", timeout=TTL + 20)
    assert time.time() - changed_at >= TTL
    new_writer = cluster.instance(report.new_writer)
    assert recovery_and_port(endpoint.writer_port) == (False, new_writer.server.port)
    with connect(endpoint.writer_port) as conn:
        conn.execute("INSERT INTO orders VALUES (2)")
        assert conn.execute("SELECT array_agg(id ORDER BY id) FROM orders").fetchone() == ([1, 2],)
