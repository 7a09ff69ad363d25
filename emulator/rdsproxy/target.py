"""The proxy's database target: its credentials (the Secrets Manager secret), what it is like
(max_connections, its session defaults) and how to open a database connection to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Protocol

from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.credentials import database_credentials
from emulator.rdsproxy.dbconn import Credentials, DatabaseError, DatabaseUnavailable, DbConnection, PoolKey
from emulator.rdsproxy.protocol.parameters import UNREPORTED
from emulator.rdsproxy.protocol.pinning import PINNING_FUNCTIONS
from emulator.rdsproxy.proxylog import ProxyLog
from emulator.rdsproxy.stats import Stats

_APPLICATION_NAME = ""  # what pooled connections start with; clients' own names are set per borrow


class Lender(Protocol):
    """Where the target borrows a connection for its own questions: the pool, so that they count
    against MaxDatabaseConnectionsAllowed like every other connection."""

    async def borrow(self, key: PoolKey, timeout: float | None) -> DbConnection: ...

    def release(self, conn: DbConnection, *, reusable: bool) -> None: ...


class Target:
    def __init__(self, config: ProxyConfig, stats: Stats, log: ProxyLog, lender: Lender) -> None:
        self.config = config
        self.stats = stats
        self.log = log
        self.lender = lender
        # The secret (re-read on rotation) or, with end-to-end IAM, generated tokens.
        self.credentials = database_credentials(config, log)
        # The server's session defaults (what a client that chose nothing gets) and its max_connections.
        self.baseline_params: dict[str, str] = {}
        self.unreported_defaults: dict[str, str] = {UNREPORTED: "1"}
        self.max_connections = 0
        # The OIDs of the functions whose call pins, for FunctionCall messages: oid -> name.
        self.pinning_functions: dict[int, str] = {}
        # PostgreSQL's own FATAL for a message type it does not know (its file, line and routine
        # fields too), to answer such a message exactly as the server would.
        self.invalid_message_fields: dict[str, str] = {}
        self._ready = asyncio.Event()
        self.availability = Availability()
        # How the server spells a parameter value ("ISO" -> "ISO, MDY"), learned once per value on a
        # pooled connection: one kept aside would take the database one connection over the cap.
        self._spellings: dict[tuple[str, str], str] = {}

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def credentials_for(self, user: str) -> Credentials | None:
        """The secret's credentials when they are for this user (one secret, one user)."""
        return self.credentials.for_client(user)

    def secret_key_for(self, access_key_id: str) -> str | None:
        """The secret key that signs IAM tokens: the credentials this proxy was given."""
        if access_key_id == os.environ.get("AWS_ACCESS_KEY_ID"):
            return os.environ.get("AWS_SECRET_ACCESS_KEY")
        return None

    async def wait_ready(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)

    async def load_secret(self) -> None:
        await self.credentials.load()

    async def open_connection(self, key: PoolKey) -> DbConnection:
        """A new database connection (the pool's opener), counted as RDS Proxy's metrics count them."""
        try:
            return await self._open_connection(key)
        except DatabaseError as exc:
            # The password was refused: the secret may have been rotated; read it again, try again.
            if exc.sqlstate == "28P01" and await self.credentials.refused():
                return await self._open_connection(key)
            raise

    async def _open_connection(self, key: PoolKey) -> DbConnection:
        host, port = self.config.target_host, self.config.target_port
        credentials = await self.credentials.for_connection(key.user, host, port)
        stats = self.stats
        stats.database_connection_requests += 1
        try:
            conn = await DbConnection.open(
                self.config.target_host,
                self.config.target_port,
                key,
                credentials,
                application_name=_APPLICATION_NAME,
                init_query=self.config.init_query,
                timeout=10,
            )
        except DatabaseError as exc:
            stats.database_connections_setup_failed += 1
            if exc.sqlstate in ("57P03", "57P01", "53300"):  # starting up, shutting down, or full
                self.availability.down(str(exc))
                raise DatabaseUnavailable(str(exc)) from exc
            raise
        except DatabaseUnavailable as exc:
            stats.database_connections_setup_failed += 1
            self.availability.down(str(exc))
            raise
        self.availability.up()
        stats.database_connections_setup_succeeded += 1
        # Every connection starts as the discovery connection did (the same init_query ran on it).
        conn.state.unreported.update(self.unreported_defaults)
        if conn.tls:
            stats.database_connection_requests_tls += 1
        local = conn.writer.get_extra_info("sockname") or ("?", "?")
        self.log.db_opened(f"{local[0]}:{local[1]}", f"{self.config.target_host}:{self.config.target_port}")
        return conn

    async def spelling(self, name: str, value: str, key: PoolKey) -> str:
        """The value as the server reports it once set (a client is told what PostgreSQL would tell
        it), asked on a connection borrowed for key; DatabaseError when the server refuses the value,
        PoolError when no connection could be borrowed."""
        known = self._spellings.get((name, value))
        if known is not None:
            return known
        conn = await self.lender.borrow(key, self.config.borrow_timeout)
        quoted = "'" + value.replace("'", "''") + "'"
        try:
            spelled = await conn.fetch_value(
                f"BEGIN; SET LOCAL {name} = {quoted}; SELECT current_setting('{name}'); ROLLBACK"
            )
        finally:
            if conn.state.txn_status != b"I" and not conn.broken:
                await conn.run_quietly("ROLLBACK")
            self.lender.release(conn, reusable=not conn.broken)
        self._spellings[(name, value)] = spelled
        return spelled

    async def probe(self) -> None:
        """While the target is unavailable: try a connection, so that availability comes back as soon
        as the database does (RDS Proxy monitors its targets), and close it."""
        await self.credentials.refresh_if_due()
        if self.availability.available:
            return
        credentials = self.credentials
        with contextlib.suppress(DatabaseUnavailable, DatabaseError):
            conn = await self.open_connection(PoolKey("postgres", credentials.monitor_user, credentials.iam))
            conn.close()

    async def discover(self) -> None:
        """Read max_connections and the server's session defaults, retrying while the target is down."""
        delay = 0.1
        monitor = PoolKey("postgres", self.credentials.monitor_user, tls=True)
        while True:
            try:
                conn = await self.open_connection(monitor)
                break
            except (DatabaseUnavailable, DatabaseError) as exc:
                self.log.info(f"Waiting for the database target: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        try:
            self.max_connections = int(await conn.fetch_value("SHOW max_connections"))
            self.baseline_params = dict(conn.state.params)
            self.unreported_defaults = {UNREPORTED: await conn.fetch_value(f"SHOW {UNREPORTED}")}
            names = ", ".join(f"'{name}'" for name in sorted(PINNING_FUNCTIONS))
            rows = await conn.fetch_rows(
                "SELECT oid, proname FROM pg_proc "
                f"WHERE pronamespace = 'pg_catalog'::regnamespace AND proname IN ({names})"
            )
            self.pinning_functions = {int(str(oid)): str(name) for oid, name in rows}
            self.invalid_message_fields = await conn.fatal_for_unknown_message()
        finally:
            conn.close()
        self._ready.set()


class Availability:
    """Whether the target can be reached, and for what share of each period it could
    (AvailabilityPercentage), as the proxy learns it from its attempts to connect and its losses."""

    def __init__(self) -> None:
        self.available = True
        self.reason = ""
        self._since = time.monotonic()
        self._available_seconds = 0.0
        self._period_start = self._since

    def _account(self) -> None:
        now = time.monotonic()
        if self.available:
            self._available_seconds += now - self._since
        self._since = now

    def up(self) -> None:
        if not self.available:
            self._account()
            self.available = True
            self.reason = ""

    def down(self, reason: str) -> None:
        if self.available:
            self._account()
            self.available = False
        self.reason = reason

    def percentage(self) -> float:
        """The share of time since the previous call that the target was available."""
        self._account()
        elapsed = self._since - self._period_start
        share = self._available_seconds / elapsed if elapsed > 0 else (1.0 if self.available else 0.0)
        self._period_start = self._since
        self._available_seconds = 0.0
        return round(100.0 * share, 2)
