"""The proxy process: listener, the secret, the target's settings, the pool, the stats endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import ssl
import time
from typing import Any

import boto3

from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.dbconn import (
    Credentials,
    DatabaseError,
    DatabaseUnavailable,
    PoolKey,
    ServerConnection,
)
from emulator.rdsproxy.metrics import NAMESPACE, MetricsPublisher
from emulator.rdsproxy.pool import Pool
from emulator.rdsproxy.proxylog import ProxyLog
from emulator.rdsproxy.session import ClientSession
from emulator.rdsproxy.stats import Stats

logger = logging.getLogger("emulator.rdsproxy")
_APPLICATION_NAME = ""  # what pooled connections start with; clients' own names are set per borrow


class ProxyServer:
    def __init__(self, config: ProxyConfig, log: ProxyLog | None = None) -> None:
        self.config = config
        self.stats = Stats()
        self.log = log or ProxyLog(debug=config.debug_logging)
        self.pool = Pool(self._open_connection, self.stats, idle_seconds=config.idle_connection_seconds)
        self.sessions: set[ClientSession] = set()
        self.tls_context: ssl.SSLContext | None = None
        if config.tls_available:
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls_context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
        self.baseline_params: dict[str, str] = {}
        self.target_max_connections = 0
        self._credentials: Credentials | None = None
        self._target_ready = asyncio.Event()
        self._statement_names: dict[bytes, str] = {}
        self._listener: asyncio.Server | None = None
        self._stats_listener: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.stats_port = 0
        self.metrics = MetricsPublisher(self)

    # -- what sessions ask of the server ---------------------------------------------------------

    def credentials_for(self, user: str) -> Credentials | None:
        return self._credentials if self._credentials and self._credentials.user == user else None

    def secret_key_for(self, access_key_id: str) -> str | None:
        """The secret key that signs IAM tokens: the credentials this proxy was given."""
        if access_key_id == os.environ.get("AWS_ACCESS_KEY_ID"):
            return os.environ.get("AWS_SECRET_ACCESS_KEY")
        return None

    async def target_ready(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._target_ready.wait(), timeout)

    def statement_name(self, query: str, types: bytes) -> str:
        """One server-side name per statement text and parameter types, shared by every client."""
        digest = hashlib.blake2b(query.encode() + b"\0" + types, digest_size=16).digest()
        name = self._statement_names.get(digest)
        if name is None:
            name = f"rdsproxy_{len(self._statement_names) + 1}"
            self._statement_names[digest] = name
        return name

    def forget(self, session: ClientSession) -> None:
        self.sessions.discard(session)

    # -- database connections --------------------------------------------------------------------

    async def _open_connection(self, key: PoolKey) -> ServerConnection:
        assert self._credentials is not None
        self.stats.database_connection_requests += 1
        try:
            conn = await ServerConnection.open(
                self.config.target_host,
                self.config.target_port,
                key,
                self._credentials,
                application_name=_APPLICATION_NAME,
                init_query=self.config.init_query,
                timeout=10,
            )
        except DatabaseError as exc:
            self.stats.database_connections_setup_failed += 1
            if exc.sqlstate in ("57P03", "53300"):  # starting up, shutting down, or full: try again
                raise DatabaseUnavailable(str(exc)) from exc
            raise
        except DatabaseUnavailable:
            self.stats.database_connections_setup_failed += 1
            raise
        self.stats.database_connections_setup_succeeded += 1
        if conn.tls:
            self.stats.database_connection_requests_tls += 1
        self.log.db_opened(conn, f"{self.config.target_host}:{self.config.target_port}")
        return conn

    def _load_secret(self) -> Credentials:
        client = boto3.session.Session().client(
            "secretsmanager",
            endpoint_url=self.config.aws_endpoint_url or None,
            region_name=self.config.region,
        )
        secret = json.loads(client.get_secret_value(SecretId=self.config.secret_arn)["SecretString"])
        # The proxy ignores every other field (host, port, engine) of the secret, as RDS Proxy does.
        return Credentials(str(secret["username"]), str(secret["password"]))

    async def _discover_target(self) -> None:
        """Read max_connections and the server's session defaults, retrying while the target is down."""
        assert self._credentials is not None
        delay = 0.1
        while True:
            try:
                conn = await self._open_connection(PoolKey("postgres", self._credentials.user, tls=True))
                break
            except (DatabaseUnavailable, DatabaseError) as exc:
                self.log.info(f"Waiting for the database target: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        try:
            self.target_max_connections = int(await conn.fetch_value("SHOW max_connections"))
            self.baseline_params = dict(conn.params)
        finally:
            conn.close()
        self.pool.cap = self.config.pool_cap(self.target_max_connections)
        self.pool.idle_keep = self.config.idle_keep(self.target_max_connections)
        self.stats.max_database_connections_allowed = self.pool.cap
        self._target_ready.set()
        self.log.info(
            f"Target {self.config.target_host}:{self.config.target_port} is available: max_connections="
            f"{self.target_max_connections}, MaxDatabaseConnectionsAllowed={self.pool.cap}."
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._credentials = await asyncio.get_running_loop().run_in_executor(None, self._load_secret)
        self._listener = await asyncio.start_server(
            self._accept, self.config.listen_host, self.config.listen_port, backlog=4096
        )
        if self.config.stats_port >= 0:
            self._stats_listener = await asyncio.start_server(
                self._serve_stats, self.config.listen_host, self.config.stats_port
            )
            self.stats_port = self._stats_listener.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._discover_target()), loop.create_task(self._sweep())]
        if self.config.publish_to_cloudwatch:
            self.log.sinks.append(self.metrics.log_sink)
            self._tasks.append(loop.create_task(self.metrics.run()))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = ClientSession(self, reader, writer)
        self.sessions.add(session)
        await session.run()

    async def _sweep(self) -> None:
        """Once a second: close idle clients (idle_client_timeout) and trim idle database connections."""
        while True:
            await asyncio.sleep(1)
            now = time.monotonic()
            for session in list(self.sessions):
                if session.established and now - session.last_activity > self.config.idle_client_timeout:
                    await session.close_idle()
            self.pool.trim_idle()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for listener in (self._listener, self._stats_listener):
            if listener is not None:
                listener.close()
        for session in list(self.sessions):
            session.writer.close()
        self.pool.close_all()

    # -- the stats endpoint ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        data = self.stats.snapshot()
        data["database_connections_in_transaction"] = sum(
            1 for conn in self.pool.borrowed if conn.txn_status != b"I"
        )
        data["pool"] = {
            "cap": self.pool.cap,
            "total": self.pool.total,
            "idle": self.pool.idle_count(),
            "borrowed": len(self.pool.borrowed),
        }
        data["borrowed"] = [{"db_connection": c.id, "owner": c.owner} for c in self.pool.borrowed]
        data["backend_pids"] = sorted(conn.process_id for conn in self.pool.connections())
        data["target_ready"] = self._target_ready.is_set()
        data["target_max_connections"] = self.target_max_connections
        return data

    async def _serve_stats(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1].decode() if request.count(b" ") >= 2 else "/"
            if path.startswith("/stats"):
                status, body = "200 OK", json.dumps(self.snapshot())
            elif path.startswith("/metrics"):
                status, body = (
                    "200 OK",
                    json.dumps(
                        {
                            "namespace": NAMESPACE,
                            "dimensions": self.metrics.dimension_sets(),
                            "values": self.metrics.values(),
                        }
                    ),
                )
            elif path.startswith("/sessions"):
                status, body = "200 OK", json.dumps([session.describe() for session in self.sessions])
            elif path.startswith("/config"):
                status, body = "200 OK", self.config.to_json()
            else:
                status, body = (
                    "404 Not Found",
                    json.dumps({"error": "try /stats, /metrics, /sessions or /config"}),
                )
            payload = body.encode()
            head = f"HTTP/1.0 {status}\r\nContent-Type: application/json\r\n"
            head += f"Content-Length: {len(payload)}\r\n\r\n"
            writer.write(head.encode() + payload)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


def run(config: ProxyConfig, ready_file: str | None = None) -> None:
    """The proxy's event loop: uvloop when it is installed (much less overhead per message)."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        asyncio.run(serve(config, ready_file))
    else:
        uvloop.run(serve(config, ready_file))


async def serve(config: ProxyConfig, ready_file: str | None = None) -> None:
    """Run until cancelled (SIGINT/SIGTERM end the process through asyncio.run)."""
    server = ProxyServer(config)
    await server.start()
    if ready_file:
        # Written whole and then renamed: whoever waits for the file never reads it half-written.
        partial = f"{ready_file}.partial"
        with open(partial, "w") as handle:
            json.dump({"port": config.listen_port, "stats_port": server.stats_port}, handle)
        os.replace(partial, ready_file)
    server.log.info(
        f"RDS Proxy emulator {config.name} listening on {config.listen_host}:{config.listen_port}"
        f" (stats on port {server.stats_port})."
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Through the loop, not signal.signal: uvloop runs Python signal handlers only when it wakes up.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
        server.log.info("Shutting down.")
    finally:
        await server.stop()
