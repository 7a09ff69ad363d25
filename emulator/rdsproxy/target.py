"""The proxy's database target: its credentials (the Secrets Manager secret), what it is like
(max_connections, its session defaults) and how to open a database connection to it.

A replicated target (target_instances) has several instances: the proxy opens its pooled
connections to the writer, which it finds by asking each instance (monitor.py) when it starts and
whenever it loses the writer; until it has found one, the pool lends nothing, not even an idle
connection (borrows queue, up to connection_borrow_timeout, as RDS Proxy queues them during a
failover)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Protocol

from emulator.rdsproxy.config import Instance, ProxyConfig
from emulator.rdsproxy.credentials import database_credentials
from emulator.rdsproxy.dbconn import (
    BORROW_TRIES,
    READ_ONLY_OPTIONS,
    SETTLE_SECONDS,
    Credentials,
    DatabaseError,
    DatabaseUnavailable,
    DbConnection,
    PoolKey,
    connection_died,
)
from emulator.rdsproxy.monitor import Observation, Role, observe_all
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
        # Being asked: the logins that want the same spelling meanwhile wait for that one answer
        # (a burst of first logins would otherwise take a database connection each).
        self._spellings_asked: dict[tuple[str, str], asyncio.Task[str]] = {}
        # The instances, the one new connections go to, and what each was when last asked.
        self.instances = config.instances()
        self.replicated = bool(config.target_instances)
        self.writer: Instance = self.instances[0]
        self.roles: dict[str, Role] = {}
        self._writer_known = asyncio.Event()
        if not self.replicated:
            self._writer_known.set()
        self._search: asyncio.Task[None] | None = None
        # Called with (old, new) when the writer changes (the pool lets go of the old one's connections).
        self.writer_changed: list[Callable[[Instance, Instance], None]] = []
        # Called with True when a search for the writer starts and False once it has found one (after
        # writer_changed): the pool lends nothing meanwhile, new transactions wait for the writer.
        self.writer_searched: list[Callable[[bool], None]] = []
        self.failovers = 0
        # Called whenever what the instances are (self.roles) changes: reader pools follow.
        self.roles_changed: list[Callable[[], None]] = []
        self._refresh: asyncio.Task[None] | None = None
        self._refresh_again = False
        # The instances ever seen as readable replicas: the target "has reader instances".
        self.readers_seen: set[str] = set()
        self._refreshed = 0.0

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
        """A new database connection to the writer (the writer pool's opener), counted as RDS Proxy's
        metrics count them; it waits while a replicated target's writer is being looked for."""
        if not self._writer_known.is_set():
            await self._writer_known.wait()
        instance = self.writer
        try:
            return await self.open_to(instance, key, self.stats)
        except DatabaseUnavailable as exc:
            self.availability.down(str(exc))
            if not exc.full:
                self.writer_lost(instance, str(exc))
            raise

    async def open_to(
        self, instance: Instance, key: PoolKey, stats: Stats, *, read_only: bool = False
    ) -> DbConnection:
        """A new database connection to this instance, counted in stats (its pool's); read_only for a
        read-only endpoint's (read-only transactions by default)."""
        try:
            return await self._open_to(instance, key, stats, read_only)
        except DatabaseError as exc:
            # The password was refused: the secret may have been rotated; read it again, try again.
            if exc.sqlstate == "28P01" and await self.credentials.refused():
                return await self._open_to(instance, key, stats, read_only)
            raise

    async def _open_to(self, instance: Instance, key: PoolKey, stats: Stats, read_only: bool) -> DbConnection:
        credentials = await self.credentials.for_connection(key.user, instance.host, instance.port)
        stats.database_connection_requests += 1
        try:
            conn = await DbConnection.open(
                instance.host,
                instance.port,
                key,
                credentials,
                application_name=_APPLICATION_NAME,
                init_query=self.config.init_query,
                timeout=10,
                options=READ_ONLY_OPTIONS if read_only else "",
            )
        except DatabaseError as exc:
            stats.database_connections_setup_failed += 1
            if exc.sqlstate in ("57P03", "57P01", "53300"):  # starting up, shutting down, or full
                raise DatabaseUnavailable(str(exc), full=exc.sqlstate == "53300") from exc
            raise
        except DatabaseUnavailable:
            stats.database_connections_setup_failed += 1
            raise
        conn.instance = instance.name
        conn.read_only = read_only
        if instance == self.writer:
            self.availability.up()
        stats.database_connections_setup_succeeded += 1
        # Every connection starts as the discovery connection did (the same init_query ran on it).
        conn.state.unreported.update(self.unreported_defaults)
        if conn.tls:
            stats.database_connection_requests_tls += 1
        local = conn.writer.get_extra_info("sockname") or ("?", "?")
        self.log.db_opened(f"{local[0]}:{local[1]}", instance.address)
        return conn

    async def spelling(self, name: str, value: str, key: PoolKey) -> str:
        """The value as the server reports it once set (a client is told what PostgreSQL would tell
        it), asked on a connection borrowed for key; DatabaseError when the server refuses the value,
        PoolError when no connection could be borrowed."""
        known = self._spellings.get((name, value))
        if known is not None:
            return known
        asked = self._spellings_asked.get((name, value))
        if asked is None:
            # A task of its own: a login that gives up meanwhile does not take the answer away from
            # the others waiting for it.
            asked = asyncio.get_running_loop().create_task(self._ask_spelling(name, value, key))
            self._spellings_asked[(name, value)] = asked
            asked.add_done_callback(lambda done: self._spelling_answered(name, value, done))
        return await asyncio.shield(asked)

    def _spelling_answered(self, name: str, value: str, done: asyncio.Task[str]) -> None:
        del self._spellings_asked[(name, value)]
        if not done.cancelled():
            done.exception()  # retrieved here: every login that waited has it raised already

    async def _ask_spelling(self, name: str, value: str, key: PoolKey) -> str:
        quoted = "'" + value.replace("'", "''") + "'"
        timeout = self.config.borrow_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        tries = 0
        while True:
            tries += 1
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            conn = await self.lender.borrow(key, left)
            try:
                spelled = await asyncio.wait_for(
                    conn.fetch_value(
                        f"BEGIN; SET LOCAL {name} = {quoted}; SELECT current_setting('{name}'); ROLLBACK"
                    ),
                    SETTLE_SECONDS,
                )
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    # A server that does not answer (frozen, unreachable) keeps no login waiting, nor
                    # the connection borrowed: it is dropped, and asked again on another.
                    exc = ConnectionError("the database connection did not answer")
                if not connection_died(exc):
                    # The server refused the value: the connection goes back once rolled back.
                    await self._give_back(conn)
                    raise
                # It died while pooled (a failover, a restart): asked again on another one.
                self.lender.release(conn, reusable=False)
                self.log.db_closed(conn, f"The database connection was lost: {exc}")
                self.connection_lost(conn, str(exc) or repr(exc))
                if tries == BORROW_TRIES:
                    raise DatabaseUnavailable(f"the database connection was lost: {exc!r}") from exc
                continue
            except BaseException:  # cancelled: in an unknown state
                self.lender.release(conn, reusable=False)
                raise
            await self._give_back(conn)
            self._spellings[(name, value)] = spelled
            return spelled

    async def _give_back(self, conn: DbConnection) -> None:
        """A connection of the proxy's own question back to the pool: rolled back if need be (as a
        departed client's is), closed when that fails."""
        settled = not conn.closing() and (conn.state.clean or await conn.settle(SETTLE_SECONDS))
        self.lender.release(conn, reusable=settled)

    async def probe(self) -> None:
        """While the target is unavailable: try a connection, so that availability comes back as soon
        as the database does (RDS Proxy monitors its targets), and close it."""
        await self.credentials.refresh_if_due()
        if self.availability.available or self.replicated:
            return  # a replicated target's instances are watched by the writer search
        credentials = self.credentials
        with contextlib.suppress(DatabaseUnavailable, DatabaseError):
            conn = await self.open_connection(PoolKey("postgres", credentials.monitor_user, credentials.iam))
            conn.close()

    async def discover(self) -> None:
        """Read max_connections and the server's session defaults, retrying while the target is down."""
        if self.replicated:
            # Routine at start-up (found within milliseconds): INFO. WARN is for a lost writer, and
            # for a start-up whose first round finds none (_find_writer).
            self._start_search(None, "The proxy is looking for the writer among its target's instances.")
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

    # -- the writer of a replicated target -------------------------------------------------------

    @property
    def writer_known(self) -> bool:
        return self._writer_known.is_set()

    def connection_lost(self, conn: DbConnection, reason: str) -> None:
        """A database connection died (under a client, or while pooled): when it was the writer's,
        the writer may be gone."""
        if not self.replicated:
            return
        if conn.instance == self.writer.name:
            self.writer_lost(self.writer, reason)
        else:
            self.refresh_soon()

    def writer_lost(self, instance: Instance, reason: str) -> None:
        """The writer did not answer: new connections wait while every instance is asked which is
        the writer now. Nothing to do for a single target (its connections are retried as they are)."""
        if not self.replicated or instance != self.writer or self._search is not None:
            return
        self.availability.down(reason)
        self._start_search(
            instance,
            f"The proxy lost the writer instance {instance.name} ({reason}); looking for the writer.",
        )

    def _start_search(self, lost: Instance | None, message: str) -> None:
        self._writer_known.clear()
        if lost is None:
            self.log.info(message)
        else:
            self.log.warn(message)
        self._search = asyncio.get_running_loop().create_task(self._find_writer(lost))
        for searched in self.writer_searched:
            searched(True)

    async def _find_writer(self, lost: Instance | None) -> None:
        """Ask every instance, every failover_probe_interval_ms, until one is the writer; the first
        in target_instances' order wins should two answer so."""
        started = time.monotonic()
        interval = self.config.failover_probe_interval_ms / 1000
        rounds = 0
        while True:
            observations = await self._observe_all()
            rounds += 1
            self._learn(observations)
            writer = next((seen.instance for seen in observations if seen.role is Role.WRITER), None)
            if writer is not None:
                break
            if rounds == 1:
                # After a lost writer this is expected (the WARN was that loss); at start-up it is the
                # problem: every instance is down or in recovery, and connections wait.
                log = self.log.info if lost is not None else self.log.warn
                log(f"No writer yet: {_describe(observations)}")
            await asyncio.sleep(interval)
        old, self.writer = self.writer, writer
        self._search = None
        self.availability.up()
        self._writer_known.set()
        took = int((time.monotonic() - started) * 1000)
        self.log.info(
            f"The writer instance is {writer.name} at {writer.address} "
            f"(found in {took} ms, {rounds} rounds): "
            f"{_describe(observations)}"
        )
        if lost is not None and old != writer:
            self.failovers += 1
            for changed in self.writer_changed:
                changed(old, writer)
        for searched in self.writer_searched:
            searched(False)

    def _learn(self, observations: list[Observation]) -> None:
        roles = {seen.instance.name: seen.role for seen in observations}
        self.readers_seen.update(name for name, role in roles.items() if role is Role.READER)
        self._refreshed = time.monotonic()
        if roles != self.roles:
            self.roles = roles
            for changed in self.roles_changed:
                changed()

    def left_recovery(self, instance: str) -> None:
        """A read-only endpoint's connection found its replica out of recovery (in_hot_standby off:
        promoted): it is no reader from now on, so its reader pool is let go at once (a read-only
        endpoint never reaches a writer), and every instance is asked what it is now (the writer
        has probably been lost)."""
        if self.roles.get(instance) is Role.READER:
            self.log.warn(f"The instance {instance} left recovery (promoted): it is no reader now.")
            self.roles = {**self.roles, instance: Role.WRITER}
            for changed in self.roles_changed:
                changed()
        self.refresh_soon(again=True)

    def refresh_soon(self, *, again: bool = False) -> None:
        """Ask every instance again now (a reader's connection was lost), unless that is under way;
        again: once more after the one under way (what it saw may be older than what we know)."""
        if not self.replicated or self._search is not None:
            return
        if self._refresh is None:
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_roles())
        elif again:
            self._refresh_again = True

    def refresh_due(self, every: float) -> None:
        """RDS Proxy monitors its targets: what the instances are is asked again every `every` s."""
        if time.monotonic() - self._refreshed >= every:
            self.refresh_soon()

    async def _refresh_roles(self) -> None:
        try:
            observations = await self._observe_all()
            if self._search is not None:
                return  # the writer search's own observations are newer
            self._learn(observations)
            role = self.roles.get(self.writer.name)
            if role is not Role.WRITER:
                detail = next(seen.detail for seen in observations if seen.instance == self.writer)
                self.writer_lost(
                    self.writer, f"it is {role.value if role else 'unknown'} now {detail}".strip()
                )
        finally:
            self._refresh = None
        if self._refresh_again:
            self._refresh_again = False
            self.refresh_soon()

    async def _observe_all(self) -> list[Observation]:
        """Every instance's role, asked as the monitoring user: with the secret's password, or with
        end-to-end IAM a token signed for each instance's endpoint, over TLS."""
        source = self.credentials
        asked = {
            instance.name: await source.for_connection(source.monitor_user, instance.host, instance.port)
            for instance in self.instances
        }
        return await observe_all(self.instances, lambda instance: asked[instance.name], tls=source.iam)

    def readable_replicas(self) -> list[Instance]:
        """The instances that answered pg_is_in_recovery() = true when last asked, in order."""
        return [i for i in self.instances if self.roles.get(i.name) is Role.READER]

    def stop(self) -> None:
        for task in (self._search, self._refresh):
            if task is not None:
                task.cancel()


def _describe(observations: list[Observation]) -> str:
    return ", ".join(f"{seen.instance.name}={seen.role.value}" for seen in observations) + "."


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
