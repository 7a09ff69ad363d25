"""The embedded stack with a replicated database: replicas beside the writer, the database's endpoints
in front of them, the env file's names, and a failover of the whole stack."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from emulator.errors import ComponentError
from emulator.stack.cluster import ClusterKind, Role, read_topology
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.proxies import ProxyKind
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def aurora_stack() -> Iterator[EmbeddedStack]:
    config = StackConfig(
        proxy=ProxyKind.EMULATOR,
        database_kind=ClusterKind.AURORA,
        replicas=2,
        # The endpoint follows the topology at once here; tests/dbendpoint pins the delay itself.
        dns_ttl_seconds=0,
        proxy_settings={
            "require_tls": False,
            "iam_auth": "DISABLED",
            "proxy_endpoints": ["reads=READ_ONLY:0"],
        },
    )
    with EmbeddedStack(config) as stack:
        yield stack


def _connect(stack: EmbeddedStack, host: str, port: int) -> psycopg.Connection:
    return psycopg.connect(
        host=host,
        port=port,
        dbname=stack.config.database,
        user=stack.config.db_user,
        password=stack.db_password,
        sslmode="prefer",
        connect_timeout=5,
        autocommit=True,
    )


def test_the_stack_runs_a_writer_and_replicas_named_as_aurora_names_them(aurora_stack: EmbeddedStack) -> None:
    cluster = aurora_stack.cluster
    assert cluster is not None
    assert [(i.name, i.role) for i in cluster.instances] == [
        ("database-1-instance-1", Role.WRITER),
        ("database-1-instance-2", Role.READER),
        ("database-1-instance-3", Role.READER),
    ]
    assert aurora_stack.postgres is cluster.writer.server
    topology = read_topology(aurora_stack.topology_path)
    assert topology["writer"] == "database-1-instance-1"


def test_the_application_s_database_and_role_reach_the_replicas(aurora_stack: EmbeddedStack) -> None:
    cluster = aurora_stack.cluster
    assert cluster is not None
    replica = cluster.instance("database-1-instance-2").server
    with _connect(aurora_stack, replica.host, replica.port) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE t (n int)")


def test_the_env_file_names_the_writer_and_reader_endpoints(aurora_stack: EmbeddedStack) -> None:
    env = aurora_stack.environment()
    endpoint = aurora_stack.database_endpoint
    assert endpoint is not None
    assert env["LOCAL_TWIN_DATABASE_KIND"] == "aurora"
    assert (env["PGHOST"], env["PGPORT"]) == (endpoint.host, str(endpoint.writer_port))
    assert env["DB_READER_PORT"] == str(endpoint.reader_port)
    assert env["LOCAL_TWIN_TOPOLOGY"] == str(aurora_stack.topology_path)
    # The baseline without a proxy goes through the writer endpoint too, as a direct client does.
    assert (aurora_stack.direct.host, aurora_stack.direct.port) == (endpoint.host, endpoint.writer_port)
    with _connect(aurora_stack, env["PGHOST"], int(env["PGPORT"])) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    with _connect(aurora_stack, env["DB_READER_HOST"], int(env["DB_READER_PORT"])) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_the_proxy_is_given_every_instance_at_its_own_address(aurora_stack: EmbeddedStack) -> None:
    cluster = aurora_stack.cluster
    assert cluster is not None
    assert isinstance(aurora_stack.proxy, RdsProxyEmulator)
    assert aurora_stack.proxy.config.target_instances == [
        f"{i.name}=127.0.0.1:{i.server.port}" for i in cluster.instances
    ]


def test_the_env_file_names_each_proxy_endpoint(aurora_stack: EmbeddedStack) -> None:
    env = aurora_stack.environment()
    assert env["PROXY_ENDPOINT_READS_HOST"] == "127.0.0.1"
    with _connect(
        aurora_stack, env["PROXY_ENDPOINT_READS_HOST"], int(env["PROXY_ENDPOINT_READS_PORT"])
    ) as conn:
        # A read-only endpoint reaches a replica.
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_a_failover_of_the_stack_moves_the_writer_and_the_writer_endpoint_follows(
    aurora_stack: EmbeddedStack,
) -> None:
    cluster = aurora_stack.cluster
    assert cluster is not None
    env = aurora_stack.environment()
    # A client of the proxy, idle across the failover.
    through_proxy = _connect(aurora_stack, aurora_stack.proxy.host, aurora_stack.proxy.port)
    through_proxy.execute("SELECT 1")
    report = aurora_stack.failover(to="database-1-instance-2")
    assert report.new_writer == "database-1-instance-2"
    # The stack's PostgreSQL (its admin connections, its counts) is the new writer.
    assert aurora_stack.postgres is cluster.instance("database-1-instance-2").server

    def writer_endpoint_writes() -> bool:
        with _connect(aurora_stack, env["PGHOST"], int(env["PGPORT"])) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS after_failover (n int)")
        return True

    # The same address as before the failover: the endpoint, not the instance, moved.
    wait_until(writer_endpoint_writes, component="the writer endpoint", timeout=15)
    # The proxy found the new writer itself: its idle client writes there.
    with through_proxy:
        through_proxy.execute("CREATE TABLE IF NOT EXISTS through_the_proxy (n int)")
        assert through_proxy.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    cluster.wait_rejoined()
    assert read_topology(aurora_stack.topology_path)["writer"] == "database-1-instance-2"


def test_a_single_instance_stack_has_nothing_to_fail_over_to(embedded_stack: EmbeddedStack) -> None:
    assert embedded_stack.cluster is None
    assert embedded_stack.database_endpoint is None
    assert read_topology(embedded_stack.topology_path)["kind"] == "single"
    with pytest.raises(ComponentError, match="single instance"):
        embedded_stack.failover()
