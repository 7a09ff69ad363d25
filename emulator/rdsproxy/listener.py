"""The proxy's listener: it accepts client connections, gives each a session, and keeps the house
(idle clients, idle database connections, shutdown)."""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from emulator.errors import ComponentError
from emulator.rdsproxy.admin import AdminEndpoint
from emulator.rdsproxy.client import ClientProtocol
from emulator.rdsproxy.config import Endpoint, Instance, ProxyConfig
from emulator.rdsproxy.dbconn import DatabaseUnavailable, DbConnection, PoolKey
from emulator.rdsproxy.metrics import MetricsPublisher, TargetPart
from emulator.rdsproxy.pool import Pool
from emulator.rdsproxy.protocol.statements import StatementNames
from emulator.rdsproxy.proxylog import ProxyLog
from emulator.rdsproxy.readers import ReaderPools
from emulator.rdsproxy.session import ClientSession, SessionDeps
from emulator.rdsproxy.stats import Latencies, Stats
from emulator.rdsproxy.target import Target

# What the instances are is asked again this often while reader endpoints depend on it (RDS Proxy
# monitors its targets); a lost reader connection asks at once.
ROLE_REFRESH_SECONDS = 5.0


class StartFailed(ComponentError):
    """What the proxy needs before it serves cannot be had: a port it was told to listen on (in use,
    not this machine's address), or its secret."""

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__("RDS Proxy emulator", problem, hint)


def _listen_failed(what: str, host: str, port: int, cause: OSError) -> StartFailed:
    return StartFailed(
        f"the {what} cannot listen on {host}:{port}: {cause.strerror or cause}",
        "choose another port (listen_port, stats_port, an endpoint's port; 0 takes a free one) or "
        "stop what listens there",
    )


@dataclass
class EndpointRuntime:
    """One proxy endpoint: its listener and what its sessions share."""

    endpoint: Endpoint
    deps: SessionDeps
    port: int = 0
    server: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def role(self) -> str:
        return self.endpoint.role


class ProxyListener:
    """An RDS Proxy: its endpoints (the default one and proxy_endpoints), their client sessions, the
    writer's pool, the readers' pools, and its target."""

    def __init__(self, config: ProxyConfig, log: ProxyLog | None = None) -> None:
        self.config = config
        self.stats = Stats()
        self.log = log or ProxyLog(debug=config.debug_logging)
        self.pool = Pool(self._open, self.stats, idle_seconds=config.idle_connection_seconds)
        self.target = Target(config, self.stats, self.log, self.pool)
        # A replicated target: a connection found dead may mean the writer is gone; while the writer
        # is looked for the pool lends nothing, and once another instance is the writer, the old
        # one's connections are let go.
        self.pool.on_dead = lambda conn: self.target.connection_lost(conn, "an idle connection was closed")
        self.target.writer_changed.append(self._writer_changed)
        self.target.writer_searched.append(self._writer_searched)
        self.readers = ReaderPools(config, self.target, self._reader_pool)
        self.sessions: set[ClientSession] = set()
        tls_context: ssl.SSLContext | None = None
        if config.tls_available:
            tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
        statement_names = StatementNames()
        self.endpoints: list[EndpointRuntime] = []
        for endpoint in config.endpoints():
            default = endpoint.name == "default"
            deps = SessionDeps(
                config=config,
                # The default endpoint counts in the proxy's own Stats (with the writer's pool), as
                # before there were endpoints; each other endpoint has its own client-side counters.
                stats=self.stats if default else Stats(),
                log=self.log if default else self.log.for_endpoint(endpoint.name),
                pool=self.pool if endpoint.role == "READ_WRITE" else self.readers,
                target=self.target,
                statement_names=statement_names,
                tls_context=tls_context,
                ended=self.sessions.discard,
                read_only=endpoint.role == "READ_ONLY",
            )
            self.endpoints.append(EndpointRuntime(endpoint, deps))
        self.deps = self.endpoints[0].deps
        self.metrics = MetricsPublisher(config, self)
        self.admin = AdminEndpoint(self)
        self._tasks: list[asyncio.Task[Any]] = []

    def _reader_pool(self, instance: Instance, stats: Stats) -> Pool:
        async def opener(key: PoolKey) -> DbConnection:
            if instance not in self.target.readable_replicas():
                # Promoted, fenced or gone since the borrow chose it: never a read-only endpoint's
                # connection to a writer; the borrow waits (it may be a replica again) or times out.
                self.target.refresh_soon()
                raise DatabaseUnavailable(f"{instance.name} is not a readable replica now")
            conn = await self.target.open_to(instance, key, stats, read_only=True)
            if conn.out_of_recovery:  # promoted since it was last asked: never lent
                conn.close()
                self.target.left_recovery(instance.name)
                raise DatabaseUnavailable(f"{instance.name} is not in recovery now")
            return conn

        pool = Pool(opener, stats, idle_seconds=self.config.idle_connection_seconds)
        pool.cap = stats.max_database_connections_allowed = self.pool.cap
        pool.idle_keep = self.pool.idle_keep
        pool.on_dead = lambda conn: self.target.connection_lost(conn, "an idle connection was closed")
        return pool

    @property
    def has_readers(self) -> bool:
        return any(runtime.role == "READ_ONLY" for runtime in self.endpoints)

    async def start(self) -> None:
        try:
            await self.target.load_secret()
        except (BotoCoreError, ClientError, ValueError, KeyError, TypeError) as exc:
            secret = self.config.secret_arn
            raise StartFailed(
                f"cannot read the secret {secret}: {exc}" if secret else "secret_arn is not set",
                "set secret_arn to the Secrets Manager secret ({username, password}) the proxy logs in "
                "with, reachable at aws_endpoint_url with the AWS credentials of this environment",
            ) from exc
        loop = asyncio.get_running_loop()
        host = self.config.listen_host
        for runtime in self.endpoints:
            try:
                runtime.server = await loop.create_server(
                    functools.partial(ClientProtocol, functools.partial(self._accept, runtime.deps), loop),
                    host,
                    runtime.endpoint.port,
                    backlog=4096,
                )
            except OSError as exc:
                raise _listen_failed(f"endpoint {runtime.name}", host, runtime.endpoint.port, exc) from exc
            runtime.port = runtime.server.sockets[0].getsockname()[1]
        if self.config.stats_port >= 0:
            try:
                await self.admin.start(host, self.config.stats_port)
            except OSError as exc:
                raise _listen_failed("stats endpoint", host, self.config.stats_port, exc) from exc
        self._tasks = [loop.create_task(self._reach_target()), loop.create_task(self._sweep())]
        if self.config.publish_to_cloudwatch:
            self.log.sinks.append(self.metrics.log_sink)
            self._tasks.append(loop.create_task(self.metrics.run()))

    def ready_file(self) -> dict[str, Any]:
        """What the ready file says: the default endpoint's port, the stats port, every endpoint."""
        return {
            "port": self.endpoints[0].port,
            "stats_port": self.admin.port,
            "endpoints": {
                runtime.name: {"port": runtime.port, "role": runtime.role} for runtime in self.endpoints
            },
        }

    async def _reach_target(self) -> None:
        await self.target.discover()
        self.pool.cap = self.config.pool_cap(self.target.max_connections)
        self.pool.idle_keep = self.config.idle_keep(self.target.max_connections)
        self.stats.max_database_connections_allowed = self.pool.cap
        # Reader pools made while the writer was looked for had no room yet.
        self.readers.sweep(self.pool.cap, self.pool.idle_keep)
        self.log.info(
            f"Target {self.target.writer.address} is available: max_connections="
            f"{self.target.max_connections}, MaxDatabaseConnectionsAllowed={self.pool.cap}."
        )

    def _writer_searched(self, searching: bool) -> None:
        if searching:
            self.pool.hold()
        else:
            self.pool.resume()

    def _writer_changed(self, old: Instance, new: Instance) -> None:
        closed = self.pool.let_go(old.name)
        self.log.info(
            f"Failover: the writer is now {new.name} at {new.address}; {closed} database connections "
            f"to {old.name} were closed."
        )

    async def _open(self, key: PoolKey) -> DbConnection:
        return await self.target.open_connection(key)

    async def _accept(self, deps: SessionDeps, protocol: ClientProtocol) -> None:
        session = ClientSession(deps, protocol)
        self.sessions.add(session)
        await session.run()

    async def _sweep(self) -> None:
        """Once a second: close idle and too old clients, and trim idle database connections."""
        while True:
            await asyncio.sleep(1)
            now = time.monotonic()
            for session in list(self.sessions):
                reason = session.expired(now)
                if reason is not None:
                    session.close(reason)
            if self.pool.drop_dead_idle():
                self.target.availability.down("the database closed the proxy's idle connections")
            await self.target.probe()
            self.pool.trim_idle()
            if self.target.replicated:
                # Also without reader endpoints: a failover while the proxy holds no connection to
                # the writer is seen only this way, before the old writer rejoins as a replica.
                self.target.refresh_due(ROLE_REFRESH_SECONDS)
                self.readers.sweep(self.pool.cap, self.pool.idle_keep)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.target.stop()
        for runtime in self.endpoints:
            if runtime.server is not None:
                runtime.server.close()
        self.admin.stop()
        for session in list(self.sessions):
            session.protocol.close()
        self.pool.close_all()
        self.readers.close_all()

    def reset_peaks(self) -> None:
        for stats in self.all_stats():
            stats.reset_peaks()

    def all_stats(self) -> list[Stats]:
        """Every set of counters: the default endpoint's (with the writer pool's), each other
        endpoint's, each reader pool's."""
        parts = [self.stats]
        parts += [runtime.deps.stats for runtime in self.endpoints if runtime.deps.stats is not self.stats]
        parts += [pool.stats for pool in self.readers.pools.values()]
        return parts

    def pools(self) -> list[Pool]:
        return [self.pool, *self.readers.pools.values()]

    def snapshot(self) -> dict[str, Any]:
        """The counters and the pools as they are now (/stats, and the metrics' raw material): the
        whole proxy's, every endpoint and pool together."""
        data = Stats.total(self.all_stats()).snapshot()
        pools = self.pools()
        connections = [conn for pool in pools for conn in pool.connections()]
        data["database_connections_in_transaction"] = sum(
            1 for pool in pools for conn in pool.borrowed if conn.txn_status != b"I"
        )
        data["database_connections_with_tls"] = sum(1 for conn in connections if conn.tls)
        data["pool"] = _pool_figures(self.pool)
        data["reader_pools"] = {name: _pool_figures(pool) for name, pool in self.readers.pools.items()}
        data["borrowed"] = [
            {"db_connection": c.id, "owner": c.owner, "instance": c.instance}
            for pool in pools
            for c in pool.borrowed
        ]
        data["backend_pids"] = sorted(conn.process_id for conn in connections)
        data["target_ready"] = self.target.ready
        data["target_available"] = self.target.availability.available
        data["target_unavailable_reason"] = self.target.availability.reason
        data["target_max_connections"] = self.target.max_connections
        data["target_writer"] = self.target.writer.name if self.target.writer_known else None
        data["target_roles"] = {name: role.value for name, role in self.target.roles.items()}
        data["failovers"] = self.target.failovers
        data["endpoints"] = {
            runtime.name: {
                "port": runtime.port,
                "role": runtime.role,
                "client_connections": runtime.deps.stats.client_connections,
            }
            for runtime in self.endpoints
        }
        return data

    # -- what the metrics are made of (metrics.Observed) ----------------------------------------------

    def endpoint_parts(self) -> list[tuple[str, Stats]]:
        return [(runtime.name, runtime.deps.stats) for runtime in self.endpoints]

    def target_parts(self) -> list[TargetPart]:
        """The writer's pool (TargetRole READ_WRITE) and each reader's (READ_ONLY)."""
        latency = {
            role: Latencies.merged(
                [
                    runtime.deps.stats.query_database_latency
                    for runtime in self.endpoints
                    if runtime.role == role
                ]
            )
            for role in ("READ_WRITE", "READ_ONLY")
        }
        parts = [
            TargetPart(self.target.writer.name, "READ_WRITE", self._figures(self.pool), latency["READ_WRITE"])
        ]
        if self.has_readers:
            parts += [
                TargetPart(name, "READ_ONLY", self._figures(pool), latency["READ_ONLY"])
                for name, pool in self.readers.pools.items()
            ]
            if not self.readers.pools:  # none readable yet: the role is still reported, empty
                parts.append(TargetPart(None, "READ_ONLY", self._figures(None), latency["READ_ONLY"]))
        return parts

    def _figures(self, pool: Pool | None) -> dict[str, float]:
        """A pool's target-side metric values: its gauges now, its counters since the proxy started."""
        if pool is None:
            return dict.fromkeys(_TARGET_FIELDS, 0.0)
        stats = pool.stats
        connections = pool.connections()
        pinned = sum(
            1 for session in self.sessions if session.pinned is not None and session.backend in pool.borrowed
        )
        return {
            "database_connections": pool.total,
            "database_connections_with_tls": sum(1 for conn in connections if conn.tls),
            "database_connections_borrowed": len(pool.borrowed),
            "database_connections_in_transaction": sum(
                1 for conn in pool.borrowed if conn.txn_status != b"I"
            ),
            "database_connections_pinned": pinned,
            "max_database_connections_allowed": pool.cap,
            "database_connection_requests": stats.database_connection_requests,
            "database_connection_requests_tls": stats.database_connection_requests_tls,
            "database_connections_setup_succeeded": stats.database_connections_setup_succeeded,
            "database_connections_setup_failed": stats.database_connections_setup_failed,
        }

    def available(self, role: str) -> float:
        """AvailabilityPercentage of a role as it is now: 100 or 0."""
        if role == "READ_ONLY":
            return 100.0 if self.readers.availability.available else 0.0
        return 100.0 if self.target.ready and self.target.availability.available else 0.0

    def availability_percentage(self, role: str) -> float:
        """AvailabilityPercentage of a role over the period since the previous call."""
        if role == "READ_ONLY":
            return self.readers.availability.percentage()
        return self.target.availability.percentage()


_TARGET_FIELDS = (
    "database_connections",
    "database_connections_with_tls",
    "database_connections_borrowed",
    "database_connections_in_transaction",
    "database_connections_pinned",
    "max_database_connections_allowed",
    "database_connection_requests",
    "database_connection_requests_tls",
    "database_connections_setup_succeeded",
    "database_connections_setup_failed",
)


def _pool_figures(pool: Pool) -> dict[str, int]:
    return {
        "cap": pool.cap,
        "total": pool.total,
        "idle": pool.idle_count(),
        "borrowed": len(pool.borrowed),
        # Being opened for a borrow (e.g. waiting for the writer during a failover).
        "opening": pool.total - pool.idle_count() - len(pool.borrowed),
    }
