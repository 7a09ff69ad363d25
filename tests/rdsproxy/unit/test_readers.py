"""A READ_ONLY endpoint's choice of replica: the least busy readable one, ties taken in turn; none
while no replica is readable."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from emulator.rdsproxy.config import Instance, ProxyConfig
from emulator.rdsproxy.dbconn import DatabaseError, PoolKey
from emulator.rdsproxy.monitor import Role
from emulator.rdsproxy.readers import ReaderPools
from emulator.rdsproxy.stats import Stats

pytestmark = pytest.mark.unit

KEY = PoolKey("app", "app_user", tls=False)
INSTANCES = [
    Instance("db-instance-1", "127.0.0.1", 1),
    Instance("db-instance-2", "127.0.0.1", 2),
    Instance("db-instance-3", "127.0.0.1", 3),
]


@dataclass
class FakeTarget:
    roles: dict[str, Role]
    instances: list[Instance] = field(default_factory=lambda: INSTANCES)
    roles_changed: list[Any] = field(default_factory=list)
    readers_seen: set[str] = field(default_factory=set)
    refreshes: int = 0

    def readable_replicas(self) -> list[Instance]:
        return [i for i in self.instances if self.roles.get(i.name) is Role.READER]

    def refresh_soon(self) -> None:
        self.refreshes += 1

    def left_recovery(self, instance: str) -> None:
        self.roles[instance] = Role.WRITER
        self.refresh_soon()


@dataclass
class FakePool:
    name: str
    busy: int = 0
    let_go_of: list[tuple[str, bool]] = field(default_factory=list)

    def borrow_now(self, key: PoolKey) -> str:
        return self.name

    async def borrow(self, key: PoolKey, timeout: float | None) -> str:
        return self.name

    def let_go(self, instance: str, *, answer_first: bool = False) -> int:
        self.let_go_of.append((instance, answer_first))
        return 0


def _readers(roles: dict[str, Role]) -> tuple[ReaderPools, FakeTarget]:
    target = FakeTarget(roles, readers_seen={n for n, r in roles.items() if r is Role.READER})
    pools = ReaderPools(
        ProxyConfig(),
        target,
        lambda instance, stats: FakePool(instance.name),  # type: ignore[arg-type, return-value]
    )
    return pools, target


def test_the_least_busy_readable_replica_is_chosen_and_ties_are_taken_in_turn() -> None:
    readers, _ = _readers(
        {"db-instance-1": Role.WRITER, "db-instance-2": Role.READER, "db-instance-3": Role.READER}
    )
    assert [readers.borrow_now(KEY) for _ in range(4)] == [
        "db-instance-2",
        "db-instance-3",
        "db-instance-2",
        "db-instance-3",
    ]
    readers.pools["db-instance-2"].busy = 2  # type: ignore[attr-defined]
    assert {readers.borrow_now(KEY) for _ in range(4)} == {"db-instance-3"}


def test_the_writer_and_a_standby_are_never_chosen() -> None:
    readers, _ = _readers({"db-instance-1": Role.WRITER, "db-instance-2": Role.STANDBY})
    assert readers.borrow_now(KEY) is None


def test_a_replica_that_stops_being_readable_is_let_go_once_what_is_in_flight_is_answered() -> None:
    readers, target = _readers({"db-instance-1": Role.WRITER, "db-instance-2": Role.READER})
    assert readers.borrow_now(KEY) == "db-instance-2"
    target.roles["db-instance-2"] = Role.WRITER  # promoted
    readers.follow_roles()
    assert readers.pools["db-instance-2"].let_go_of == [("db-instance-2", True)]  # type: ignore[attr-defined]
    assert not readers.availability.available


def test_a_replica_that_becomes_unreachable_is_let_go_at_once_its_answers_may_never_come() -> None:
    readers, target = _readers({"db-instance-1": Role.WRITER, "db-instance-2": Role.READER})
    assert readers.borrow_now(KEY) == "db-instance-2"
    target.roles["db-instance-2"] = Role.UNREACHABLE
    readers.follow_roles()
    assert readers.pools["db-instance-2"].let_go_of == [("db-instance-2", False)]  # type: ignore[attr-defined]


@dataclass
class FakeConnection:
    instance: str
    params: dict[str, str]
    read_only: bool = True
    closed: bool = False

    @property
    def out_of_recovery(self) -> bool:
        return self.read_only and self.params.get("in_hot_standby") == "off"

    def close(self) -> None:
        self.closed = True


def test_a_connection_whose_replica_left_recovery_is_closed_and_its_replica_no_reader() -> None:
    readers, target = _readers({"db-instance-1": Role.WRITER, "db-instance-2": Role.READER})
    # Given back after the answer that carried in_hot_standby off (PostgreSQL 14+, at promotion).
    conn = FakeConnection("db-instance-2", {"in_hot_standby": "off"})
    readers.release(conn, reusable=True)  # type: ignore[arg-type]
    assert conn.closed
    assert target.roles["db-instance-2"] is Role.WRITER
    assert target.refreshes == 1


def test_without_reader_instances_a_borrow_fails_at_once() -> None:
    readers, _ = _readers({"db-instance-1": Role.WRITER})
    with pytest.raises(DatabaseError, match="no reader DB instances"):
        asyncio.run(readers.borrow(KEY, 30))


def test_with_reader_instances_all_unavailable_a_borrow_waits_for_one() -> None:
    readers, target = _readers({"db-instance-1": Role.WRITER, "db-instance-2": Role.READER})
    target.roles["db-instance-2"] = Role.UNREACHABLE

    async def scenario() -> Any:
        readers.follow_roles()
        waiting = asyncio.create_task(readers.borrow(KEY, 30))
        await asyncio.sleep(0)  # the borrow is now waiting for a replica
        assert not waiting.done()
        target.roles["db-instance-2"] = Role.READER
        readers.follow_roles()
        return await asyncio.wait_for(waiting, 5)

    assert asyncio.run(scenario()) == "db-instance-2"
    assert target.refreshes >= 1


def test_with_reader_instances_all_unavailable_a_borrow_times_out() -> None:
    from emulator.rdsproxy.pool import BorrowTimeout  # noqa: PLC0415

    readers, target = _readers({"db-instance-1": Role.WRITER, "db-instance-2": Role.UNREACHABLE})
    target.readers_seen.add("db-instance-2")
    with pytest.raises(BorrowTimeout):
        asyncio.run(readers.borrow(KEY, 0.01))


def test_every_reader_pool_has_its_own_counters() -> None:
    made: list[Stats] = []

    def make(instance: Instance, stats: Stats) -> FakePool:
        made.append(stats)
        return FakePool(instance.name)

    target = FakeTarget({"db-instance-2": Role.READER, "db-instance-3": Role.READER})
    readers = ReaderPools(ProxyConfig(), target, make)  # type: ignore[arg-type]
    readers.borrow_now(KEY)
    readers.borrow_now(KEY)
    assert len(made) == 2
    assert made[0] is not made[1]
