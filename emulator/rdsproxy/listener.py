"""The proxy's listener: it accepts client connections, gives each a session, and keeps the house
(idle clients, idle database connections, shutdown)."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from emulator.rdsproxy.admin import AdminEndpoint
from emulator.rdsproxy.client import ClientProtocol
from emulator.rdsproxy.config import Instance, ProxyConfig
from emulator.rdsproxy.dbconn import DbConnection, PoolKey
from emulator.rdsproxy.metrics import MetricsPublisher
from emulator.rdsproxy.pool import Pool
from emulator.rdsproxy.protocol.statements import StatementNames
from emulator.rdsproxy.proxylog import ProxyLog
from emulator.rdsproxy.session import ClientSession, SessionDeps
from emulator.rdsproxy.stats import Stats
from emulator.rdsproxy.target import Target


class ProxyListener:
    """One RDS Proxy endpoint: a listener, its client sessions, the pool they share, and its target."""

    def __init__(self, config: ProxyConfig, log: ProxyLog | None = None) -> None:
        self.config = config
        self.stats = Stats()
        self.log = log or ProxyLog(debug=config.debug_logging)
        self.pool = Pool(self._open, self.stats, idle_seconds=config.idle_connection_seconds)
        self.target = Target(config, self.stats, self.log, self.pool)
        # A replicated target: a connection found dead may mean the writer is gone, and once another
        # instance is the writer, the old one's connections are let go.
        self.pool.on_dead = lambda conn: self.target.connection_lost(conn, "an idle connection was closed")
        self.target.writer_changed.append(self._writer_changed)
        self.sessions: set[ClientSession] = set()
        tls_context: ssl.SSLContext | None = None
        if config.tls_available:
            tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
        self.deps = SessionDeps(
            config=config,
            stats=self.stats,
            log=self.log,
            pool=self.pool,
            target=self.target,
            statement_names=StatementNames(),
            tls_context=tls_context,
            ended=self.sessions.discard,
        )
        self.metrics = MetricsPublisher(
            config, self.snapshot, self.stats, self.target.availability.percentage
        )
        self.admin = AdminEndpoint(self)
        self._listener: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        await self.target.load_secret()
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: ClientProtocol(self._accept, loop),
            self.config.listen_host,
            self.config.listen_port,
            backlog=4096,
        )
        if self.config.stats_port >= 0:
            await self.admin.start(self.config.listen_host, self.config.stats_port)
        self._tasks = [loop.create_task(self._reach_target()), loop.create_task(self._sweep())]
        if self.config.publish_to_cloudwatch:
            self.log.sinks.append(self.metrics.log_sink)
            self._tasks.append(loop.create_task(self.metrics.run()))

    async def _reach_target(self) -> None:
        await self.target.discover()
        self.pool.cap = self.config.pool_cap(self.target.max_connections)
        self.pool.idle_keep = self.config.idle_keep(self.target.max_connections)
        self.stats.max_database_connections_allowed = self.pool.cap
        self.log.info(
            f"Target {self.target.writer.address} is available: max_connections="
            f"{self.target.max_connections}, MaxDatabaseConnectionsAllowed={self.pool.cap}."
        )

    def _writer_changed(self, old: Instance, new: Instance) -> None:
        closed = self.pool.let_go(old.name)
        self.log.info(
            f"Failover: the writer is now {new.name} at {new.address}; {closed} database connections "
            f"to {old.name} were closed."
        )

    async def _open(self, key: PoolKey) -> DbConnection:
        return await self.target.open_connection(key)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = writer.transport.get_protocol()
        assert isinstance(protocol, ClientProtocol)
        session = ClientSession(self.deps, protocol, writer)
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

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.target.stop()
        if self._listener is not None:
            self._listener.close()
        self.admin.stop()
        for session in list(self.sessions):
            session.writer.close()
        self.pool.close_all()

    def reset_peaks(self) -> None:
        self.stats.reset_peaks()

    def snapshot(self) -> dict[str, Any]:
        """The counters and the pool as they are now (/stats, and the metrics' raw material)."""
        data = self.stats.snapshot()
        connections = self.pool.connections()
        data["database_connections_in_transaction"] = sum(
            1 for conn in self.pool.borrowed if conn.txn_status != b"I"
        )
        data["database_connections_with_tls"] = sum(1 for conn in connections if conn.tls)
        data["pool"] = {
            "cap": self.pool.cap,
            "total": self.pool.total,
            "idle": self.pool.idle_count(),
            "borrowed": len(self.pool.borrowed),
            # Being opened for a borrow (e.g. waiting for the writer during a failover).
            "opening": self.pool.total - self.pool.idle_count() - len(self.pool.borrowed),
        }
        data["borrowed"] = [{"db_connection": c.id, "owner": c.owner} for c in self.pool.borrowed]
        data["backend_pids"] = sorted(conn.process_id for conn in connections)
        data["target_ready"] = self.target.ready
        data["target_available"] = self.target.availability.available
        data["target_unavailable_reason"] = self.target.availability.reason
        data["target_max_connections"] = self.target.max_connections
        data["target_writer"] = self.target.writer.name if self.target.writer_known else None
        data["target_roles"] = {name: role.value for name, role in self.target.roles.items()}
        data["failovers"] = self.target.failovers
        return data
