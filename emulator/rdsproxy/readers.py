"""The pools of a READ_ONLY proxy endpoint: one per readable replica, as RDS Proxy pools "separately
for the writer and reader instance".

Each borrow goes to the least busy readable replica (borrowed, being opened or waited for; ties
taken in turn): a Lambda burst then spreads over the replicas at once, where plain round-robin would
keep sending work to a replica whose pool is full while another's has room. A replica that stops
being readable (promoted, fenced, unreachable) is let go: its connections are closed, so a read-only
endpoint never runs anything on a writer.

Without a readable replica, as AWS documents for proxy endpoints ("Using reader endpoints with Aurora
clusters"): when the target has no reader instances at all (a single instance, or a Multi-AZ
instance whose standby is not readable), requests "fail with an error"; when it has some (an
instance was seen readable) but none is available, "RDS Proxy waits to send the request instead of
returning an error immediately. If no reader instance becomes available within the connection
borrow timeout period, the request fails with an error" (the borrow timeout's).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable

from emulator.rdsproxy import texts
from emulator.rdsproxy.config import Instance, ProxyConfig
from emulator.rdsproxy.dbconn import DatabaseError, DbConnection, PoolKey
from emulator.rdsproxy.monitor import Role
from emulator.rdsproxy.pool import BorrowTimeout, Pool, PoolClosed
from emulator.rdsproxy.stats import Stats
from emulator.rdsproxy.target import Availability, Target

PoolFactory = Callable[[Instance, Stats], Pool]


class ReaderPools:
    """The Lender of READ_ONLY endpoints (borrow_now, borrow, release, as a Pool)."""

    def __init__(self, config: ProxyConfig, target: Target, make_pool: PoolFactory) -> None:
        self.config = config
        self.target = target
        self._make_pool = make_pool
        self.pools: dict[str, Pool] = {}
        self._turn = itertools.count()
        # Replaced by a new one each time the readable replicas change: waiters hold the one they saw.
        self._changed = asyncio.Event()
        # AvailabilityPercentage for TargetRole READ_ONLY: some replica is readable.
        self.availability = Availability()
        self.availability.down("no readable replica yet")
        self.closed = False
        target.roles_changed.append(self.follow_roles)

    def pool_for(self, instance: Instance) -> Pool:
        pool = self.pools.get(instance.name)
        if pool is None:
            pool = self.pools[instance.name] = self._make_pool(instance, Stats())
        return pool

    def follow_roles(self) -> None:
        """The instances' roles changed: pools for new replicas, and none left on a former one."""
        readable = {instance.name for instance in self.target.readable_replicas()}
        for instance in self.target.readable_replicas():
            # A pool (empty until a borrow) as soon as a replica is known: its metrics name it.
            self.pool_for(instance)
        for name, pool in self.pools.items():
            if name not in readable:
                # A promoted replica still answers what it runs; an unreachable one may never.
                pool.let_go(name, answer_first=self.target.roles.get(name) is Role.WRITER)
        if readable:
            self.availability.up()
        else:
            self.availability.down("no readable replica")
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _choose(self) -> Pool | None:
        readers = [self.pool_for(instance) for instance in self.target.readable_replicas()]
        if not readers:
            return None
        least = min(pool.busy for pool in readers)
        candidates = [pool for pool in readers if pool.busy == least]
        return candidates[next(self._turn) % len(candidates)]

    def borrow_now(self, key: PoolKey) -> DbConnection | None:
        if self.closed:
            raise PoolClosed
        pool = self._choose()
        return None if pool is None else pool.borrow_now(key)

    async def borrow(self, key: PoolKey, timeout: float | None) -> DbConnection:
        deadline = time.monotonic() + timeout if timeout is not None else math.inf
        while (pool := self._choose()) is None:
            if self.closed:
                raise PoolClosed
            if not self.target.readers_seen:
                raise DatabaseError({"C": texts.CONNECTION_EXCEPTION, "M": texts.NO_READER_INSTANCES})
            # No readable replica: wait for one, as a borrow waits for the writer during a failover.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BorrowTimeout("no readable replica")
            self.target.refresh_soon()
            try:
                await asyncio.wait_for(self._changed.wait(), None if remaining == math.inf else remaining)
            except TimeoutError:
                raise BorrowTimeout("no readable replica") from None
        remaining = deadline - time.monotonic()
        return await pool.borrow(key, None if remaining == math.inf else max(0.0, remaining))

    def release(self, conn: DbConnection, *, reusable: bool) -> None:
        pool = self.pools.get(conn.instance)
        if conn.out_of_recovery:
            # Its replica was promoted (it said so at this connection's last ReadyForQuery).
            reusable = False
            self.target.left_recovery(conn.instance)
        if pool is not None and conn in pool.borrowed:
            pool.release(conn, reusable=reusable)
        else:  # its replica's pool is gone (never expected): closed
            conn.close()

    def sweep(self, cap: int, idle_keep: int) -> None:
        """The house-keeping of each reader pool (the listener's once-a-second sweep)."""
        for pool in self.pools.values():
            pool.resize(cap, idle_keep)
            pool.stats.max_database_connections_allowed = cap
            pool.drop_dead_idle()
            pool.trim_idle()

    def close_all(self) -> None:
        self.closed = True
        for pool in self.pools.values():
            pool.close_all()
