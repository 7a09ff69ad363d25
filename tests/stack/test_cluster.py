"""The replicated target: real PostgreSQL streaming replication, Aurora's readable replicas, the
Multi-AZ standby that serves nobody, and a failover that fences, promotes and repoints."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from emulator.errors import ComponentError
from emulator.stack.cluster import (
    ClusterKind,
    ClusterSettings,
    ReplicatedCluster,
    Role,
    instance_names,
    read_topology,
)
from emulator.stack.postgres import PostgresSettings, find_postgres_binaries
from emulator.stack.process import hand_over, service_user
from emulator.stack.tls import LocalCA
from emulator.wait import wait_until

pytestmark = pytest.mark.integration

# Replica lag is real: a write shows on a replica within this, not at once.
LAG_DEADLINE = 10.0


def _cluster(settings: ClusterSettings) -> Iterator[ReplicatedCluster]:
    user = service_user()
    # Under /tmp and owned by the server user, like a stack's workdir (pytest's tmp_path is root-only).
    workdir = Path(tempfile.mkdtemp(prefix="local-twin-cluster-"))
    hand_over(workdir, user)
    try:
        with ReplicatedCluster(
            workdir,
            find_postgres_binaries(),
            PostgresSettings(max_connections=20),
            settings,
            user=user,
            certificate=LocalCA(workdir).issue_server("postgres", ["localhost", "127.0.0.1"]),
            superuser_password=secrets.token_urlsafe(12),
        ) as cluster:
            yield cluster
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def aurora() -> Iterator[ReplicatedCluster]:
    yield from _cluster(ClusterSettings(ClusterKind.AURORA, identifier="db", replicas=2))


@pytest.fixture
def multi_az() -> Iterator[ReplicatedCluster]:
    yield from _cluster(ClusterSettings(ClusterKind.MULTI_AZ, identifier="db"))


def _sees(cluster: ReplicatedCluster, name: str, value: int) -> bool:
    with cluster.connect(name) as conn:
        row = conn.execute("SELECT count(*) FROM notes WHERE n = %s", (value,)).fetchone()
    return row is not None and row[0] == 1


def _refusal(cluster: ReplicatedCluster, name: str) -> tuple[str, str]:
    """The FATAL message and detail a connection to the instance gets."""
    with pytest.raises(psycopg.OperationalError) as refused, cluster.connect(name):
        pass
    text = str(refused.value)
    message = text.partition("FATAL:")[2].partition("\n")[0].strip()
    detail = text.partition("DETAIL:")[2].partition("\n")[0].strip()
    return message, detail


def test_instances_are_named_as_rds_names_them() -> None:
    assert instance_names(ClusterKind.AURORA, "orders", 2) == [
        "orders-instance-1",
        "orders-instance-2",
        "orders-instance-3",
    ]
    assert instance_names(ClusterKind.MULTI_AZ, "orders", 1) == ["orders", "orders-standby"]


def test_settings_refuse_what_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="1 to 15 replicas"):
        ClusterSettings(ClusterKind.AURORA, replicas=0)
    with pytest.raises(ValueError, match="aurora or multi-az"):
        ClusterSettings(ClusterKind.SINGLE)
    with pytest.raises(ValueError, match="fast' or 'immediate"):
        ClusterSettings(fence="kill")


def test_the_topology_file_names_the_writer_and_readable_replicas(aurora: ReplicatedCluster) -> None:
    assert aurora.topology_path is not None
    topology = read_topology(aurora.topology_path)
    assert topology["kind"] == "aurora"
    assert topology["writer"] == "db-instance-1"
    assert topology["generation"] >= 1
    assert [(i["name"], i["role"], i["readable"]) for i in topology["instances"]] == [
        ("db-instance-1", "writer", True),
        ("db-instance-2", "reader", True),
        ("db-instance-3", "reader", True),
    ]
    ports = {i["port"] for i in topology["instances"]}
    assert len(ports) == 3
    assert all(i["host"] == "127.0.0.1" for i in topology["instances"])


def test_a_write_on_the_writer_reaches_every_replica(aurora: ReplicatedCluster) -> None:
    with aurora.connect("db-instance-1") as conn:
        conn.execute("CREATE TABLE notes (n int)")
        conn.execute("INSERT INTO notes VALUES (1)")
    for replica in ("db-instance-2", "db-instance-3"):
        wait_until(lambda replica=replica: _sees(aurora, replica, 1), component=replica, timeout=LAG_DEADLINE)
        with aurora.connect(replica) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_an_aurora_replica_refuses_writes_as_postgresql_does(aurora: ReplicatedCluster) -> None:
    with (
        aurora.connect("db-instance-2") as conn,
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused,
    ):
        conn.execute("CREATE TABLE t (n int)")
    assert refused.value.sqlstate == "25006"
    assert "read-only transaction" in str(refused.value)


def test_the_multi_az_standby_refuses_connections(multi_az: ReplicatedCluster) -> None:
    assert [(i.name, i.role) for i in multi_az.instances] == [
        ("db", Role.WRITER),
        ("db-standby", Role.STANDBY),
    ]
    # 57P03's text (libpq reports a refused connection by its message, not its SQLSTATE).
    assert _refusal(multi_az, "db-standby") == (
        "the database system is not accepting connections",
        "Hot standby mode is disabled.",
    )
    assert read_topology(multi_az.topology_path or Path())["instances"][1]["readable"] is False


def test_failover_promotes_a_replica_and_the_old_writer_s_connections_are_gone(
    aurora: ReplicatedCluster,
) -> None:
    with aurora.connect("db-instance-1") as conn:
        conn.execute("CREATE TABLE notes (n int)")
        conn.execute("INSERT INTO notes VALUES (1)")
    old_connection = psycopg.connect(
        aurora.writer.server.conninfo(
            user="postgres", password=aurora.superuser_password, dbname="postgres", connect_timeout=5
        ),
        autocommit=True,
    )
    before = read_topology(aurora.topology_path or Path())["generation"]

    report = aurora.failover(to="db-instance-3")

    assert (report.old_writer, report.new_writer) == ("db-instance-1", "db-instance-3")
    assert report.repointed == ("db-instance-2",)
    assert 0 < report.fence_seconds < report.total_seconds
    assert report.promote_seconds > 0
    assert report.old_writer_fate == "rejoining as reader"
    with pytest.raises(psycopg.OperationalError):
        old_connection.execute("SELECT 1")
    old_connection.close()
    # Nothing committed on the old writer is lost: its WAL reached the replicas before it stopped.
    with aurora.connect("db-instance-3") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        conn.execute("INSERT INTO notes VALUES (2)")
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (2,)
    topology = read_topology(aurora.topology_path or Path())
    assert topology["writer"] == "db-instance-3"
    assert topology["generation"] > before
    # The other replica follows the new writer.
    wait_until(lambda: _sees(aurora, "db-instance-2", 2), component="db-instance-2", timeout=LAG_DEADLINE)
    # The old writer comes back as a reader of the new one.
    aurora.wait_rejoined()
    assert aurora.rejoin_error is None
    assert aurora.instance("db-instance-1").role is Role.READER
    wait_until(lambda: _sees(aurora, "db-instance-1", 2), component="db-instance-1", timeout=LAG_DEADLINE)
    final = read_topology(aurora.topology_path or Path())
    assert {i["name"]: i["role"] for i in final["instances"]} == {
        "db-instance-1": "reader",
        "db-instance-2": "reader",
        "db-instance-3": "writer",
    }
    # And the cluster can fail over again, to the most advanced replica.
    again = aurora.failover()
    assert again.old_writer == "db-instance-3"
    assert again.new_writer in ("db-instance-1", "db-instance-2")


def test_multi_az_failover_swaps_writer_and_standby(multi_az: ReplicatedCluster) -> None:
    with multi_az.connect("db") as conn:
        conn.execute("CREATE TABLE notes (n int)")
        conn.execute("INSERT INTO notes VALUES (1)")
    report = multi_az.failover()
    assert (report.old_writer, report.new_writer) == ("db", "db-standby")
    assert report.old_writer_fate == "rejoining as standby"
    assert json.loads(json.dumps(report.to_json()))["new_writer"] == "db-standby"
    with multi_az.connect("db-standby") as conn:
        conn.execute("INSERT INTO notes VALUES (2)")
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (2,)
    multi_az.wait_rejoined()
    assert multi_az.instance("db").role is Role.STANDBY
    assert _refusal(multi_az, "db")[1] == "Hot standby mode is disabled."


def test_failover_names_only_a_replica(aurora: ReplicatedCluster) -> None:
    with pytest.raises(ComponentError, match="it is the cluster's writer"):
        aurora.failover(to="db-instance-1")
    with pytest.raises(ComponentError, match="no instance 'nope'"):
        aurora.failover(to="nope")
    assert aurora.writer.name == "db-instance-1"
