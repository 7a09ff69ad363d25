"""The proxy in front of a real Aurora-like cluster (a writer and two streaming replicas): the
read-only endpoint, and failovers by a real promote, with real drivers.

The failover tests run last in this module: they change the cluster's writer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psutil
import psycopg
import psycopg2
import pytest

from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend
from emulator.stack.cluster import ClusterKind, Instance, ReplicatedCluster
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.wait import wait_until

from .failover_support import LongStatements
from .helpers import ProxyUnderTest, RawClient, wait_quiescent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_stack() -> Iterator[EmbeddedStack]:
    config = StackConfig(
        database_kind=ClusterKind.AURORA,
        replicas=2,
        max_connections=30,
        pool_size=6,
        proxy_settings={
            "connection_borrow_timeout": 30,
            "proxy_endpoints": ["reads=READ_ONLY:0"],
            "metrics_period_seconds": 1,
            "name": "cluster-proxy",
        },
    )
    with EmbeddedStack(config) as stack:
        yield stack


@pytest.fixture
def proxy(cluster_stack: EmbeddedStack) -> Iterator[ProxyUnderTest]:
    assert isinstance(cluster_stack.proxy, RdsProxyEmulator)
    under_test = ProxyUnderTest(cluster_stack, cluster_stack.proxy)
    yield under_test
    wait_quiescent(cluster_stack.proxy, timeout=20)
    wait_until(
        lambda: all(p["borrowed"] == 0 for p in under_test.stats()["reader_pools"].values()),
        component="the reader pools (quiescent)",
        timeout=20,
    )


def _reads_port(proxy: ProxyUnderTest) -> int:
    return int(proxy.emulator.endpoints()["reads"]["port"])


def _reader(proxy: ProxyUnderTest) -> psycopg.Connection[Any]:
    return proxy.connect(port=_reads_port(proxy))


def _one(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_the_default_endpoint_reaches_the_writer_and_the_read_only_one_a_replica(
    proxy: ProxyUnderTest,
) -> None:
    cluster = proxy.stack.cluster
    assert cluster is not None
    replicas = {i.server.port for i in cluster.instances if i is not cluster.writer}
    with proxy.connect() as writes, _reader(proxy) as reads:
        assert _one(writes, "SELECT pg_is_in_recovery()") is False
        assert _one(writes, "SELECT inet_server_port()") == cluster.writer.server.port
        assert _one(reads, "SELECT pg_is_in_recovery()") is True
        assert _one(reads, "SELECT inet_server_port()") in replicas


def test_concurrent_transactions_on_the_read_only_endpoint_go_to_the_least_busy_replica(
    proxy: ProxyUnderTest,
) -> None:
    cluster = proxy.stack.cluster
    assert cluster is not None
    replicas = {i.server.port for i in cluster.instances if i is not cluster.writer}
    first, second = _reader(proxy), _reader(proxy)
    try:
        first.execute("BEGIN")
        second.execute("BEGIN")
        # Each holds its replica's connection for its transaction: the second goes to the other one.
        assert {
            _one(first, "SELECT inet_server_port()"),
            _one(second, "SELECT inet_server_port()"),
        } == replicas
        first.execute("COMMIT")
        second.execute("COMMIT")
    finally:
        first.close()
        second.close()


def test_writes_through_the_read_only_endpoint_are_refused_as_a_replica_refuses_them(
    proxy: ProxyUnderTest,
) -> None:
    cluster = proxy.stack.cluster
    assert cluster is not None
    replica = next(i for i in cluster.instances if i is not cluster.writer)
    statement = "CREATE TABLE written_on_a_replica (id int)"
    with _reader(proxy) as reads, pytest.raises(psycopg.Error) as through_proxy:
        reads.execute(statement)
    with cluster.connect(replica.name) as direct, pytest.raises(psycopg.Error) as directly:
        direct.execute(statement)
    assert through_proxy.value.sqlstate == directly.value.sqlstate == "25006"
    assert through_proxy.value.diag.message_primary == directly.value.diag.message_primary
    assert (
        through_proxy.value.diag.message_primary == "cannot execute CREATE TABLE in a read-only transaction"
    )


def test_the_read_only_endpoints_sessions_default_to_read_only_transactions(proxy: ProxyUnderTest) -> None:
    with _reader(proxy) as reads:
        # Its connections start with default_transaction_read_only on (a replica promoted under
        # them still refuses writes): the client is told so, and RESET ALL / DISCARD ALL keep it.
        assert reads.info.parameter_status("default_transaction_read_only") == "on"
        assert reads.info.parameter_status("in_hot_standby") == "on"
        assert _one(reads, "SHOW default_transaction_read_only") == "on"
        for reset in ("RESET ALL", "DISCARD ALL"):
            reads.execute(reset)
            assert _one(reads, "SHOW default_transaction_read_only") == "on"
    with proxy.connect() as writes:
        assert writes.info.parameter_status("default_transaction_read_only") == "off"
        assert _one(writes, "SHOW default_transaction_read_only") == "off"


def test_metrics_have_each_endpoint_and_target_role(proxy: ProxyUnderTest) -> None:
    with proxy.connect() as writes, _reader(proxy) as reads, _reader(proxy) as more_reads:
        for conn in (writes, reads, more_reads):
            conn.execute("SELECT 1")
        rows = proxy.emulator.metrics()["rows"]

        def row(**dimensions: str) -> dict[str, float]:
            return next(
                r["values"] for r in rows if r["dimensions"] == {"ProxyName": "cluster-proxy", **dimensions}
            )

        assert row()["ClientConnections"] == 3
        assert row(EndpointName="default")["ClientConnections"] == 1
        assert row(EndpointName="reads")["ClientConnections"] == 2
        read_only = row(TargetGroup="default", TargetRole="READ_ONLY")
        read_write = row(TargetGroup="default", TargetRole="READ_WRITE")
        assert read_only["DatabaseConnections"] >= 1
        assert read_only["AvailabilityPercentage"] == read_write["AvailabilityPercentage"] == 100.0
        assert read_write["DatabaseConnections"] >= 1
    cloudwatch = proxy.stack.aws.client("cloudwatch")

    def published() -> set[tuple[str, str]]:
        pages = cloudwatch.get_paginator("list_metrics").paginate(Namespace="AWS/RDS")
        found = set()
        for page in pages:
            for metric in page["Metrics"]:
                named = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
                if named.get("ProxyName") == "cluster-proxy":
                    for key in ("EndpointName", "TargetRole"):
                        if key in named:
                            found.add((metric["MetricName"], named[key]))
        return found

    wanted = {
        ("ClientConnections", "reads"),
        ("QueryRequests", "reads"),
        ("ClientConnections", "default"),
        ("DatabaseConnections", "READ_ONLY"),
        ("DatabaseConnections", "READ_WRITE"),
        ("AvailabilityPercentage", "READ_ONLY"),
    }
    wait_until(lambda: wanted <= published(), component="per-endpoint metrics in CloudWatch", timeout=30)


def test_log_lines_name_the_endpoint(proxy: ProxyUnderTest) -> None:
    with _reader(proxy) as reads:
        reads.execute("SET work_mem = '8MB'")  # pins: the pin line names the endpoint
    log = proxy.emulator.log_path

    def logged() -> bool:
        text = log.read_text()
        return (
            "[reads] [clientConnection=" in text
            and "[WARN] [proxyEndpoint=reads] [clientConnection=" in text
            and "Proxy endpoint reads (READ_ONLY) listening on port" in text
        )

    wait_until(logged, component="the endpoint's log lines", timeout=10)


async def _asyncpg_connect(proxy: ProxyUnderTest) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=proxy.host,
        port=proxy.port,
        user=proxy.user,
        database=proxy.database,
        password=proxy.password(),
        ssl=False,
    )


def _idle_pooled_backends(proxy: ProxyUnderTest, instance: str) -> list[psutil.Process]:
    """The instance's backends of the proxy's idle pooled connections (the application user's)."""
    cluster = proxy.stack.cluster
    assert cluster is not None
    with cluster.connect(instance) as direct:
        rows = direct.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND state = 'idle'", (proxy.user,)
        ).fetchall()
    return [psutil.Process(pid) for (pid,) in rows]


def _resume(backends: list[psutil.Process]) -> None:
    for backend in backends:
        with contextlib.suppress(psutil.NoSuchProcess):
            backend.resume()


def test_a_failover_with_a_real_promote_spares_idle_clients_and_fails_those_in_flight(
    proxy: ProxyUnderTest,
) -> None:
    stack = proxy.stack
    cluster = stack.cluster
    assert cluster is not None
    with contextlib.ExitStack() as cleanup:
        idle3 = [cleanup.enter_context(proxy.connect()) for _ in range(3)]
        idle2 = psycopg2.connect(**proxy.conninfo())
        cleanup.callback(idle2.close)
        idle2.autocommit = True
        loop = asyncio.new_event_loop()
        cleanup.callback(loop.close)
        idle_async = loop.run_until_complete(_asyncpg_connect(proxy))
        cleanup.callback(lambda: loop.run_until_complete(idle_async.close()))
        readers_idle = cleanup.enter_context(_reader(proxy))
        for conn in idle3:
            assert _one(conn, "SELECT pg_is_in_recovery()") is False
        with idle2.cursor() as cur:
            cur.execute("SELECT 1")
        assert loop.run_until_complete(idle_async.fetchval("SELECT 1")) == 1
        busy = [cleanup.enter_context(proxy.connect()) for _ in range(3)]
        statements = LongStatements(busy)
        wait_until(lambda: proxy.stats()["pool"]["borrowed"] == 3, component="the statements", timeout=10)
        old_writer = cluster.writer.name
        waiting = cleanup.enter_context(proxy.connect())
        assert _one(waiting, "SELECT 1") == 1
        # The idle pooled connections' backends are stopped: the fence's FATAL reaches the in-flight
        # ones, not them, as when the proxy reads one socket before another. An idle connection to
        # the writer being lost must not be lent meanwhile.
        frozen = _idle_pooled_backends(proxy, old_writer)
        assert frozen, "the pool keeps idle connections to the writer"
        cleanup.callback(_resume, frozen)
        for backend in frozen:
            backend.suspend()
        reports: list[Any] = []
        failing_over = threading.Thread(target=lambda: reports.append(stack.failover()))
        failing_over.start()
        cleanup.callback(lambda: failing_over.join(60))
        # While the proxy has no writer (the old one fenced, the new one not yet promoted), a new
        # transaction waits for it, and then runs on it.
        wait_until(lambda: not proxy.stats()["target_available"], component="the writer's loss", timeout=20)
        waited: list[Any] = []
        transaction = threading.Thread(
            target=lambda: waited.append(_one(waiting, "SELECT inet_server_port()"))
        )
        transaction.start()
        wait_until(
            lambda: proxy.stats()["borrow_waiters"] == 1, component="the transaction's wait", timeout=10
        )
        _resume(frozen)
        failing_over.join(60)
        assert not failing_over.is_alive()
        transaction.join(30)
        report = reports[0]
        assert waited == [cluster.instance(report.new_writer).server.port]

        for error in statements.outcomes():
            assert isinstance(error, psycopg.OperationalError), error
            # A fast shutdown fences the writer: its own FATAL is held back, the proxy's 08006 tells it.
            assert error.sqlstate == "08006", error
        new_writer = cluster.instance(report.new_writer)
        assert report.new_writer != old_writer
        # Idle clients of every driver: their next transaction runs on the new writer.
        for conn in [*idle3, *busy]:
            assert _one(conn, "SELECT inet_server_port()") == new_writer.server.port
            assert _one(conn, "SELECT pg_is_in_recovery()") is False
        with idle2.cursor() as cur:
            cur.execute("SELECT inet_server_port()")
            assert cur.fetchone() == (new_writer.server.port,)
        assert (
            loop.run_until_complete(idle_async.fetchval("SELECT inet_server_port()"))
            == new_writer.server.port
        )
        # The read-only endpoint's idle client reads from a replica again.
        assert _one(readers_idle, "SELECT pg_is_in_recovery()") is True
        stats = proxy.stats()
        assert stats["target_writer"] == report.new_writer
        assert stats["failovers"] == 1
    cluster.wait_rejoined()


def test_a_read_only_endpoint_never_writes_on_its_replica_once_promoted(proxy: ProxyUnderTest) -> None:
    stack = proxy.stack
    cluster = _with_table(proxy, "written_after_promotion")
    with _reader(proxy) as reads:
        replica = _replica_of(reads, cluster)
        reports: list[Any] = []
        failing_over = threading.Thread(target=lambda: reports.append(stack.failover(to=replica.name)))
        failing_over.start()
        outcomes: list[str] = []
        after = 0
        # Through the failover and ~3 s after (10 more attempts), an insert every 0.3 s.
        while after < 10:
            if not failing_over.is_alive():
                after += 1
            try:
                reads.execute("INSERT INTO written_after_promotion VALUES (1)")
                outcomes.append("inserted")
            except psycopg.Error as exc:
                outcomes.append(f"{exc.sqlstate} {exc.diag.message_primary}")
            time.sleep(0.3)  # the pace of the user's trial, not a wait for anything
        failing_over.join(60)
        assert reports
        assert reports[0].new_writer == replica.name
        assert set(outcomes) == {"25006 cannot execute INSERT in a read-only transaction"}, outcomes
        with proxy.connect() as writes:
            assert _one(writes, "SELECT count(*) FROM written_after_promotion") == 0
            assert _one(writes, "SELECT inet_server_port()") == replica.server.port
        # The promoted instance is no reader of the endpoint now: it reads from a replica again.
        assert _one(reads, "SELECT pg_is_in_recovery()") is True
        assert proxy.stats()["target_roles"][replica.name] == "writer"
    cluster.wait_rejoined()


@pytest.mark.parametrize(
    ("blocked", "answer"),
    [
        ("SELECT pg_advisory_xact_lock(4242), 42", ("", 42)),
        # A COPY FROM STDIN: the proxy holds the client's next messages until this is answered.
        (
            "SELECT pg_advisory_xact_lock(4242), 42; COPY copied_during_promotion FROM STDIN",
            "25006 cannot execute COPY FROM in a read-only transaction",
        ),
    ],
    ids=["a query", "a query the proxy holds the next messages for"],
)
def test_a_read_only_endpoints_statement_running_as_its_replica_is_promoted_gets_its_answer(
    proxy: ProxyUnderTest, blocked: str, answer: Any
) -> None:
    # Closing the connection when the proxy learns of the promotion would not stop what the server
    # already runs, only lose its answer (the CI failure of c391c10: an 08006 among the 25006s).
    cluster = _with_table(proxy, "copied_during_promotion")
    with _reader(proxy) as reads:
        replica = _replica_of(reads, cluster)
        # A lock held on the replica itself (advisory locks work in recovery) keeps the reader's
        # statement running until the test lets it finish: no race with the failover's pace.
        with cluster.connect(replica.name, dbname=proxy.database) as holder:
            holder.execute("SELECT pg_advisory_lock(4242)")
            answers: list[Any] = []
            running = threading.Thread(target=lambda: answers.append(_answer(reads, blocked)))
            running.start()
            try:
                _promote_under_a_waiting_statement(proxy, replica, holder, 4242)
                assert running.is_alive(), answers  # (an 08006 here: cut under its statement)
            finally:
                holder.execute("SELECT pg_advisory_unlock(4242)")
                running.join(30)
        assert answers == [answer]
        # The promoted instance is let go: the next statement reads from a replica (at once: a
        # session that waited for that answer must not wait for good).
        assert _answer_within(reads, "SELECT pg_is_in_recovery()", timeout=20) == (True,)
    cluster.wait_rejoined()


def test_a_request_sent_once_the_proxy_knows_its_replica_was_promoted_waits_and_goes_to_a_replica(
    proxy: ProxyUnderTest,
) -> None:
    # The request in flight is answered on the promoted instance; the next one, sent behind it after
    # the proxy learned of the promotion, must not follow it there: a read-only endpoint never
    # reaches a writer. (A raw client: drivers do not send a request before the last is answered.)
    stack = proxy.stack
    cluster = _rejoined(proxy)
    client = RawClient(proxy.host, _reads_port(proxy))
    try:
        client.login_scram(proxy.user, stack.db_password, proxy.database)
        replica_port = int(_raw_rows(client, "SELECT inet_server_port()")[0][0] or 0)
        replica = next(i for i in cluster.instances if i.server.port == replica_port)
        with cluster.connect(replica.name, dbname=proxy.database) as holder:
            holder.execute("SELECT pg_advisory_lock(4243)")
            try:
                client.send(m.simple_query("SELECT pg_advisory_xact_lock(4243), 42"))
                _promote_under_a_waiting_statement(proxy, replica, holder, 4243)
                client.send(m.simple_query("SELECT pg_is_in_recovery(), inet_server_port()"))
            finally:
                holder.execute("SELECT pg_advisory_unlock(4243)")
        assert _raw_answer(client) == [["", "42"]]
        [(in_recovery, port)] = _raw_answer(client)
        assert in_recovery == "t"
        assert port != str(replica_port)
    finally:
        client.close()
    cluster.wait_rejoined()


def _raw_rows(client: RawClient, sql: str) -> list[list[str | None]]:
    client.send(m.simple_query(sql))
    return _raw_answer(client)


def _raw_answer(client: RawClient) -> list[list[str | None]]:
    """The rows of the next answer, up to its ReadyForQuery (an error fails the test)."""
    frames = client.read_until(Backend.READY_FOR_QUERY)
    errors = [m.parse_message_fields(f.body) for f in frames if f.kind == Backend.ERROR_RESPONSE]
    assert not errors, errors
    return [m.data_row_values(f.body) for f in frames if f.kind == Backend.DATA_ROW]


def _with_table(proxy: ProxyUnderTest, table: str) -> ReplicatedCluster:
    """The cluster, its last failover's old writer a replica again, with an empty table of the
    application's user on the writer and (replicated) on every replica: a write on a replica is
    then refused, not missing."""
    cluster = _rejoined(proxy)
    with proxy.connect() as writes:
        writes.execute(f"CREATE TABLE IF NOT EXISTS {table} (id int)")
        writes.execute(f"TRUNCATE {table}")
    for instance in cluster.instances:
        if instance is not cluster.writer:
            with cluster.connect(instance.name, dbname=proxy.database) as direct:
                wait_until(
                    lambda direct=direct: _one(direct, f"SELECT to_regclass('{table}') IS NOT NULL"),
                    component=f"the table on {instance.name}",
                    timeout=20,
                )
    return cluster


def _rejoined(proxy: ProxyUnderTest) -> ReplicatedCluster:
    """The cluster, its last failover's old writer a replica again."""
    cluster = proxy.stack.cluster
    assert cluster is not None
    cluster.wait_rejoined()
    return cluster


def _promote_under_a_waiting_statement(
    proxy: ProxyUnderTest, replica: Instance, holder: psycopg.Connection[Any], lock: int
) -> None:
    """Once a statement waits for the lock holder holds on the replica: the replica promoted, and
    the proxy following (its reader pool for the replica was let go as it found the new writer)."""
    wait_until(
        lambda: _waits_for_lock(holder, lock),
        component="the reader's statement (waiting for the lock)",
        timeout=10,
    )
    report = proxy.stack.failover(to=replica.name)
    wait_until(
        lambda: proxy.stats()["target_writer"] == report.new_writer,
        component="the proxy (following the promotion)",
        timeout=30,
    )


def _replica_of(reads: psycopg.Connection[Any], cluster: ReplicatedCluster) -> Instance:
    """The instance a read-only endpoint's client reads from now."""
    port = _one(reads, "SELECT inet_server_port()")
    return next(i for i in cluster.instances if i.server.port == port)


def _answer(conn: psycopg.Connection[Any], sql: str) -> Any:
    """The last row of the last statement's result, or the error's code and message."""
    try:
        cursor = conn.execute(sql)
        row = None
        while True:
            if cursor.description is not None:
                row = cursor.fetchone()
            if not cursor.nextset():
                return row
    except psycopg.Error as exc:
        return f"{exc.sqlstate} {exc.diag.message_primary}"


def _answer_within(conn: psycopg.Connection[Any], sql: str, *, timeout: float) -> Any:
    answers: list[Any] = []
    asking = threading.Thread(target=lambda: answers.append(_answer(conn, sql)), daemon=True)
    asking.start()
    asking.join(timeout)
    return answers[0] if answers else f"no answer within {timeout} s"


def _waits_for_lock(holder: psycopg.Connection[Any], key: int) -> bool:
    row = holder.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted", (key,)
    ).fetchone()
    return row is not None and row[0] == 1
