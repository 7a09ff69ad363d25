"""A replicated database: a writer and its replicas, by real PostgreSQL streaming replication.

Two kinds, as RDS offers them:
- `aurora`: an Aurora PostgreSQL cluster, a writer and N readable replicas (hot standbys), named
  `<identifier>-instance-1`, `-instance-2`, ...;
- `multi-az`: a Multi-AZ DB instance, `<identifier>`, with one standby that serves nobody
  (hot_standby=off: a connection to it is refused with 57P03), `<identifier>-standby` here.

Replicas are made with `pg_basebackup -R` from the running writer and stream its WAL
asynchronously. Every change of roles is written to the topology file (`topology.json`, read by
the database endpoint), atomically.

failover(): fence the writer (stop it; its connections drop), promote the chosen replica, point
the other replicas at it, write the topology, and report how long each step took. Afterwards the
old writer comes back as a replica of the new one, in the background (role `fenced` until it
streams), as AWS does: Aurora promotes a reader and the old writer rejoins the cluster as a reader
(docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/Concepts.AuroraHighAvailability.html,
"Fault tolerance for an Aurora DB cluster"); a Multi-AZ instance fails over to its standby and the
old primary becomes the new standby (docs.aws.amazon.com/AmazonRDS/latest/UserGuide/
Concepts.MultiAZ.Failover.html). ClusterSettings.rejoin_old_writer=False leaves it fenced.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from emulator.errors import ComponentError
from emulator.lifecycle import Started
from emulator.stack import libpq
from emulator.stack.postgres import (
    COMPONENT,
    PostgresBinaries,
    PostgresServer,
    PostgresSettings,
)
from emulator.stack.process import ServiceUser, hand_over, run_checked
from emulator.stack.tls import ServerCertificate
from emulator.wait import wait_until

TOPOLOGY_FILE = "topology.json"
# The role replicas log in with to stream WAL (RDS's own replication role has this name).
REPLICATION_USER = "rdsrepladmin"
# The settings file each instance includes last: what differs between instances (port, hot_standby).
# pg_basebackup copies the writer's postgresql.conf, so these must not live there.
_INSTANCE_CONF = "instance.conf"


class ClusterKind(enum.StrEnum):
    SINGLE = "single"
    AURORA = "aurora"
    MULTI_AZ = "multi-az"


class Role(enum.StrEnum):
    WRITER = "writer"
    # An Aurora replica: readable.
    READER = "reader"
    # A Multi-AZ standby: not readable.
    STANDBY = "standby"
    # An old writer: stopped, or rejoining as a replica.
    FENCED = "fenced"


def instance_names(kind: ClusterKind, identifier: str, replicas: int) -> list[str]:
    """The writer's name first, then the replicas', as RDS names them."""
    if kind is ClusterKind.AURORA:
        return [f"{identifier}-instance-{number}" for number in range(1, replicas + 2)]
    if kind is ClusterKind.MULTI_AZ:
        return [identifier, f"{identifier}-standby"]
    return [identifier]


@dataclass(frozen=True)
class ClusterSettings:
    kind: ClusterKind = ClusterKind.AURORA
    # The DB identifier (aurora: the cluster's; multi-az: the instance's).
    identifier: str = "db"
    # Aurora replicas (multi-az always has one standby).
    replicas: int = 1
    # The instances' names, the writer's first (an applied Terraform's); empty: RDS's naming.
    names: tuple[str, ...] = ()
    # How the old writer is fenced: "fast" (PostgreSQL's fast shutdown: clients are disconnected at
    # once, and the WAL already written reaches the replicas first, so no committed transaction is
    # lost, as none is on Aurora's shared storage or Multi-AZ's synchronous standby) or "immediate"
    # (a crash: the last asynchronously replicated commits may be lost).
    fence: str = "fast"
    # The old writer comes back as a replica after a failover (as on AWS), or stays fenced.
    rejoin_old_writer: bool = True
    # Deadlines: a replica streaming after its start, a standby out of recovery after promotion.
    replica_timeout: float = 60.0
    promote_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.kind is ClusterKind.SINGLE:
            raise ValueError("a replicated cluster is of kind aurora or multi-az")
        if self.kind is ClusterKind.AURORA and not 1 <= self.replicas <= 15:
            # Aurora allows up to 15 Aurora Replicas; a failover needs at least one.
            raise ValueError(f"an Aurora cluster here has 1 to 15 replicas, not {self.replicas}")
        expected = len(instance_names(self.kind, self.identifier, self.replicas))
        if self.names and len(self.names) != expected:
            raise ValueError(f"a {self.kind} cluster with {self.replicas} replicas has {expected} instances")
        if self.fence not in ("fast", "immediate"):
            raise ValueError(f"fence is 'fast' or 'immediate', not {self.fence!r}")


@dataclass
class Instance:
    name: str
    server: PostgresServer
    role: Role

    @property
    def readable(self) -> bool:
        return self.role in (Role.WRITER, Role.READER)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.server.host,
            "port": self.server.port,
            "role": str(self.role),
            "readable": self.readable,
        }


@dataclass(frozen=True)
class FailoverReport:
    """What a failover did and how long each step took (seconds)."""

    old_writer: str
    new_writer: str
    generation: int
    # The old writer stopped (its connections gone).
    fence_seconds: float
    # The promoted replica out of recovery, accepting writes.
    promote_seconds: float
    # The other replicas pointed at the new writer (configuration reloaded).
    repoint_seconds: float
    # From the start of the fence until the topology names the new writer and replicas are repointed.
    total_seconds: float
    repointed: tuple[str, ...] = ()
    # What becomes of the old writer: "rejoining as reader|standby" or "fenced".
    old_writer_fate: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "old_writer": self.old_writer,
            "new_writer": self.new_writer,
            "generation": self.generation,
            "fence_seconds": round(self.fence_seconds, 4),
            "promote_seconds": round(self.promote_seconds, 4),
            "repoint_seconds": round(self.repoint_seconds, 4),
            "total_seconds": round(self.total_seconds, 4),
            "repointed": list(self.repointed),
            "old_writer_fate": self.old_writer_fate,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FailoverReport:
        return cls(**{**data, "repointed": tuple(data.get("repointed", ()))})


@dataclass
class ReplicatedCluster(Started):
    """Start with `with ReplicatedCluster(...) as cluster:` or start()/stop()."""

    workdir: Path
    binaries: PostgresBinaries
    postgres_settings: PostgresSettings
    settings: ClusterSettings
    user: ServiceUser | None
    certificate: ServerCertificate | None
    superuser_password: str
    topology_path: Path | None = None
    # A server already running (the stack's, started before it knew it needed a cluster) becomes the
    # writer; otherwise the cluster makes and starts its own writer.
    writer_server: PostgresServer | None = None
    instances: list[Instance] = field(init=False, default_factory=list)
    generation: int = field(init=False, default=0)
    rejoin_error: BaseException | None = field(init=False, default=None)
    _replication_password: str = field(init=False, default_factory=lambda: secrets.token_urlsafe(18))
    _failover_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _state_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _rejoining: threading.Thread | None = field(init=False, default=None)
    _changed_at: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.topology_path is None:
            self.topology_path = self.workdir / TOPOLOGY_FILE
        settings = self.settings
        names = list(settings.names) or instance_names(settings.kind, settings.identifier, settings.replicas)
        for index, name in enumerate(names):
            if index == 0 and self.writer_server is not None:
                self.instances.append(Instance(name, self.writer_server, Role.WRITER))
                continue
            directory = self.workdir / name
            server = PostgresServer(
                directory,
                self.binaries,
                self.postgres_settings,
                user=self.user,
                certificate=self.certificate,
                superuser_password=self.superuser_password,
            )
            self.instances.append(Instance(name, server, Role.WRITER if index == 0 else self._replica_role))

    @property
    def _replica_role(self) -> Role:
        return Role.READER if self.settings.kind is ClusterKind.AURORA else Role.STANDBY

    @property
    def writer(self) -> Instance:
        return next(instance for instance in self.instances if instance.role is Role.WRITER)

    def instance(self, name: str) -> Instance:
        for instance in self.instances:
            if instance.name == name:
                return instance
        known = ", ".join(instance.name for instance in self.instances)
        raise ComponentError(COMPONENT, f"the cluster has no instance {name!r}", f"its instances: {known}")

    # -- starting and stopping ------------------------------------------------------------------

    def start(self) -> None:
        writer = self.instances[0]
        adopted = writer.server.running
        if not adopted:
            self._make_directory(writer)
            writer.server.initialize()
        writer.server.append_settings(
            [
                # PostgreSQL 15's defaults, said out loud: replicas need them.
                "wal_level = replica",
                "max_wal_senders = 10",
                # WAL kept for a replica that falls behind (a rebuild starts from a fresh backup anyway).
                "wal_keep_size = '128MB'",
                # A repointed replica retries its new writer soon instead of in the default 5 s.
                "wal_retrieve_retry_interval = '200ms'",
                f"include_if_exists = '{_INSTANCE_CONF}'",
            ],
            "Added by the local twin's cluster: streaming replication",
        )
        self._write_instance_conf(writer)
        if adopted:
            # Every setting above takes effect on a reload; wal_level and max_wal_senders, which
            # would need a restart, are already PostgreSQL's defaults.
            writer.server.signal(signal.SIGHUP)
        else:
            writer.server.start()
        with writer.server.admin_connection() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} WITH REPLICATION LOGIN PASSWORD {}").format(
                    sql.Identifier(REPLICATION_USER), sql.Literal(self._replication_password)
                )
            )
        for replica in self.instances[1:]:
            replica.server.binaries = writer.server.binaries
            self._make_replica(replica, writer)
        self._changed()

    def stop(self) -> None:
        rejoining = self._rejoining
        if rejoining is not None:
            rejoining.join(self.settings.replica_timeout)
        # Replicas first: a writer's fast shutdown waits for its connected replicas to get its WAL.
        for instance in sorted(self.instances, key=lambda i: i.role is Role.WRITER):
            try:
                instance.server.stop()
            except Exception as exc:  # noqa: BLE001 - the others must still be stopped
                print(f"warning: stopping {instance.name}: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _make_directory(self, instance: Instance) -> None:
        directory = instance.server.workdir
        if not directory.exists():
            directory.mkdir(parents=True)
            hand_over(directory, self.user)

    def _write_instance_conf(self, instance: Instance) -> None:
        lines = [
            f"port = {instance.server.port}",
            # Only an Aurora replica serves reads; a Multi-AZ standby refuses connections (57P03).
            f"hot_standby = {'off' if self.settings.kind is ClusterKind.MULTI_AZ else 'on'}",
        ]
        path = instance.server.datadir / _INSTANCE_CONF
        path.write_text(
            "# Written by the local twin's cluster: this instance's own settings\n" + "\n".join(lines) + "\n"
        )
        hand_over(path, self.user)

    def _primary_conninfo(self, instance: Instance, writer: Instance) -> str:
        return libpq.conninfo(
            host=writer.server.host,
            port=writer.server.port,
            user=REPLICATION_USER,
            password=self._replication_password,
            application_name=instance.name,
            sslmode="prefer",
        )

    def _point_at(self, instance: Instance, writer: Instance) -> None:
        """Set the replica's primary_conninfo (in postgresql.auto.conf, where pg_basebackup -R put it)."""
        path = instance.server.datadir / "postgresql.auto.conf"
        kept = [line for line in path.read_text().splitlines() if not line.startswith("primary_conninfo")]
        value = self._primary_conninfo(instance, writer).replace("'", "''")
        path.write_text("\n".join([*kept, f"primary_conninfo = '{value}'"]) + "\n")
        hand_over(path, self.user)

    def _make_replica(self, replica: Instance, writer: Instance) -> None:
        """A fresh base backup of the writer, started as its streaming replica."""
        self._make_directory(replica)
        datadir = replica.server.datadir
        if datadir.exists():
            shutil.rmtree(datadir)
        env = libpq.program_environment({"PGPASSWORD": self._replication_password, "PGSSLMODE": "prefer"})
        run_checked(
            COMPONENT,
            [
                writer.server.binaries.tool("pg_basebackup"),
                "-D",
                str(datadir),
                "-h",
                writer.server.host,
                "-p",
                str(writer.server.port),
                "-U",
                REPLICATION_USER,
                "-X",
                "stream",
                "-c",
                "fast",
                "-R",
                "--no-sync",
            ],
            user=self.user,
            env=env,
        )
        self._write_instance_conf(replica)
        self._point_at(replica, writer)
        replica.server.start(
            timeout=self.settings.replica_timeout,
            ready=lambda: self._streaming(replica, writer),
        )

    def _streaming(self, replica: Instance, writer: Instance) -> bool:
        """The writer sends the replica WAL, and a readable replica answers queries."""
        with writer.server.admin_connection(connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT state FROM pg_stat_replication WHERE application_name = %s", (replica.name,)
            ).fetchone()
        if row is None or row[0] != "streaming":
            return False
        if self.settings.kind is ClusterKind.AURORA:
            with replica.server.admin_connection(connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        return True

    # -- the topology ---------------------------------------------------------------------------

    def topology(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "kind": str(self.settings.kind),
            "writer": self.writer.name,
            "changed_at": self._changed_at,
            "instances": [instance.describe() for instance in self.instances],
        }

    def _changed(self) -> None:
        """A new generation of the topology, written atomically (tmp + os.replace)."""
        with self._state_lock:
            self.generation += 1
            self._changed_at = time.time()
            assert self.topology_path is not None
            write_topology(self.topology_path, self.topology())

    # -- failover -------------------------------------------------------------------------------

    def failover(self, to: str | None = None) -> FailoverReport:
        """Fence the writer, promote a replica (`to`, or the one that received the most WAL; AWS picks
        by promotion tier and then size, equal here), repoint the others, write the topology."""
        with self._failover_lock:
            self.wait_rejoined()
            old = self.writer
            candidates = [i for i in self.instances if i.role in (Role.READER, Role.STANDBY)]
            if to is not None:
                target = self.instance(to)
                if target not in candidates:
                    raise ComponentError(
                        COMPONENT,
                        f"cannot fail over to {to}: it is the cluster's {target.role}",
                        "name a replica: " + ", ".join(i.name for i in candidates),
                    )
            elif not candidates:
                raise ComponentError(
                    COMPONENT, "no replica to fail over to", "wait for the old writer to rejoin"
                )
            started = time.monotonic()
            old.server.stop(immediate=self.settings.fence == "immediate")
            with self._state_lock:
                old.role = Role.FENCED
            fenced = time.monotonic()
            if to is None:
                target = max(candidates, key=lambda i: (self._received(i), -candidates.index(i)))
            target.server.pg_ctl("promote", "--no-wait")
            wait_until(
                lambda: self._promoted(target),
                component=f"{COMPONENT} {target.name} (promotion)",
                timeout=self.settings.promote_timeout,
                hint=f"its log is {target.server.workdir / 'postgres.log'}",
            )
            with self._state_lock:
                target.role = Role.WRITER
            promoted = time.monotonic()
            self._changed()
            others = [i for i in candidates if i is not target]
            for replica in others:
                self._point_at(replica, target)
                replica.server.signal(signal.SIGHUP)
            repointed = time.monotonic()
            # After the report's clock: the failover is done for clients, replicas catch up.
            lost = self._not_following(others, target)
            fate = "fenced"
            if self.settings.rejoin_old_writer:
                fate = f"rejoining as {self._replica_role}"
                self._rejoin_in_background([old, *lost], target)
            return FailoverReport(
                old_writer=old.name,
                new_writer=target.name,
                generation=self.generation,
                fence_seconds=fenced - started,
                promote_seconds=promoted - fenced,
                repoint_seconds=repointed - promoted,
                total_seconds=repointed - started,
                repointed=tuple(i.name for i in others),
                old_writer_fate=fate,
            )

    def _received(self, replica: Instance) -> int:
        """How much WAL a readable replica has received (a standby that refuses connections: 0)."""
        try:
            with replica.server.admin_connection(connect_timeout=2) as conn:
                row = conn.execute(
                    "SELECT pg_wal_lsn_diff(coalesce(pg_last_wal_receive_lsn(), '0/0'), '0/0')::bigint"
                ).fetchone()
        except psycopg.Error:
            return 0
        return int(row[0]) if row else 0

    @staticmethod
    def _promoted(instance: Instance) -> bool:
        with instance.server.admin_connection(connect_timeout=2) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return row is not None and row[0] is False

    def _not_following(self, replicas: list[Instance], writer: Instance) -> list[Instance]:
        """Replicas that do not stream from the new writer within the deadline (one that had received
        more of the old writer's WAL than the promoted one cannot follow it): rebuilt, fenced until then."""
        lost = []
        for replica in replicas:
            try:
                wait_until(
                    lambda replica=replica: self._streaming(replica, writer),  # type: ignore[misc]
                    component=f"{COMPONENT} {replica.name} (following {writer.name})",
                    timeout=self.settings.replica_timeout / 4,
                )
            except ComponentError:
                lost.append(replica)
        if lost:
            with self._state_lock:
                for replica in lost:
                    replica.server.stop(immediate=True)
                    replica.role = Role.FENCED
            self._changed()
        return lost

    def _rejoin_in_background(self, instances: list[Instance], writer: Instance) -> None:
        def rejoin() -> None:
            try:
                for instance in instances:
                    self._make_replica(instance, writer)
                    with self._state_lock:
                        instance.role = self._replica_role
                    self._changed()
            except BaseException as exc:  # noqa: BLE001 - kept for wait_rejoined(); the cluster stays up
                self.rejoin_error = exc
                print(f"warning: the old writer did not rejoin: {exc}", file=sys.stderr)

        self.rejoin_error = None
        self._rejoining = threading.Thread(target=rejoin, name="local-twin-rejoin", daemon=True)
        self._rejoining.start()

    def wait_rejoined(self, timeout: float | None = None) -> None:
        """Wait until the instances fenced by the last failover are replicas again (or failed to be)."""
        rejoining = self._rejoining
        if rejoining is None:
            return
        rejoining.join(self.settings.replica_timeout * 2 if timeout is None else timeout)
        if rejoining.is_alive():
            raise ComponentError(COMPONENT, "the old writer is still rejoining the cluster")
        self._rejoining = None

    @contextlib.contextmanager
    def connect(self, name: str, **extra: Any) -> Iterator[psycopg.Connection]:
        """A superuser connection to one instance (tests, checks)."""
        with self.instance(name).server.admin_connection(**extra) as conn:
            yield conn


def write_topology(path: Path, topology: dict[str, Any]) -> None:
    """Atomically (tmp + os.replace): a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(topology, indent=1) + "\n")
    os.replace(tmp, path)


def single_topology(name: str, server: PostgresServer) -> dict[str, Any]:
    """The topology of one instance (kind single), for the database endpoint when it runs."""
    return {
        "generation": 1,
        "kind": str(ClusterKind.SINGLE),
        "writer": name,
        "changed_at": time.time(),
        "instances": [Instance(name, server, Role.WRITER).describe()],
    }


def read_topology(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


__all__ = [
    "ClusterKind",
    "ClusterSettings",
    "FailoverReport",
    "Instance",
    "ReplicatedCluster",
    "Role",
    "instance_names",
    "read_topology",
    "single_topology",
    "write_topology",
]
