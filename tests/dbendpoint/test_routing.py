"""Where each endpoint's name points."""

from __future__ import annotations

import pytest

from emulator.dbendpoint.routing import InstanceRoute, ReaderRoute, WriterRoute
from emulator.dbendpoint.topology import Instance, Topology

pytestmark = pytest.mark.unit


def cluster(*instances: tuple[str, str, bool], writer: str | None = "w") -> Topology:
    return Topology(
        generation=1,
        kind="aurora",
        writer=writer,
        changed_at=0.0,
        instances=tuple(
            Instance(name, "127.0.0.1", 1000 + n, role, readable)
            for n, (name, role, readable) in enumerate(instances)
        ),
    )


def test_the_writer_endpoint_points_at_the_writer_whatever_its_state() -> None:
    topology = cluster(("w", "fenced", False), ("r", "reader", True))
    picked = WriterRoute().pick(topology)
    assert picked is not None
    assert picked.name == "w"


def test_the_reader_endpoint_takes_the_readable_replicas_in_turn() -> None:
    topology = cluster(
        ("w", "writer", True), ("r1", "reader", True), ("r2", "reader", True), ("s", "standby", False)
    )
    route = ReaderRoute()
    picks = [route.pick(topology) for _ in range(4)]
    assert [p.name for p in picks if p is not None] == ["r1", "r2", "r1", "r2"]


def test_the_reader_endpoint_without_replicas_points_at_the_writer() -> None:
    topology = cluster(("w", "writer", True), ("r", "reader", False))
    picked = ReaderRoute().pick(topology)
    assert picked is not None
    assert picked.name == "w"


def test_an_instance_endpoint_stays_on_its_instance() -> None:
    topology = cluster(("w", "fenced", False), ("r", "writer", True), writer="r")
    picked = InstanceRoute("w").pick(topology)
    assert picked is not None
    assert (picked.name, picked.role) == ("w", "fenced")
    assert InstanceRoute("gone").pick(topology) is None


def test_no_writer_points_nowhere() -> None:
    assert WriterRoute().pick(cluster(("r", "reader", True), writer=None)) is None


def test_the_reader_endpoint_at_random_reaches_every_replica_and_only_them() -> None:
    topology = cluster(("w", "writer", True), ("r1", "reader", True), ("r2", "reader", True))
    route = ReaderRoute("random")
    picks = {picked.name for picked in (route.pick(topology) for _ in range(200)) if picked is not None}
    # 200 draws miss one of two replicas with probability 2 x 2^-200.
    assert picks == {"r1", "r2"}
