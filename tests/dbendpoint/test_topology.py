"""The topology file as DNS shows it: changes reach new connections only after the TTL."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from emulator.dbendpoint.topology import TopologyReader, parse_topology

pytestmark = pytest.mark.unit


def topology(generation: int, writer: str, changed_at: float = 0.0, **roles: str) -> dict[str, Any]:
    names = {"db-instance-1": 45001, "db-instance-2": 45002}
    return {
        "generation": generation,
        "kind": "aurora",
        "writer": writer,
        "changed_at": changed_at,
        "instances": [
            {
                "name": name,
                "host": "127.0.0.1",
                "port": port,
                "role": roles.get(name.replace("-", "_"), "reader"),
            }
            for name, port in names.items()
        ],
    }


def write(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_topology_is_visible_at_once(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    write(path, topology(1, "db-instance-1", changed_at=999.0, db_instance_1="writer"))
    reader = TopologyReader(path, dns_ttl_seconds=5, clock=Clock())
    reader.load()
    assert reader.current().writer == "db-instance-1"


def test_a_change_reaches_new_connections_a_ttl_after_it_was_made(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    clock = Clock()
    write(path, topology(1, "db-instance-1", db_instance_1="writer"))
    reader = TopologyReader(path, dns_ttl_seconds=5, clock=clock)
    reader.load()
    write(
        path, topology(2, "db-instance-2", changed_at=1000.0, db_instance_1="fenced", db_instance_2="writer")
    )
    assert reader.refresh() is not None
    assert reader.latest().writer == "db-instance-2"
    clock.now = 1004.9
    assert reader.current().writer == "db-instance-1"
    assert reader.next_visible_at() == 1005.0
    clock.now = 1005.0
    assert reader.current().writer == "db-instance-2"
    assert reader.next_visible_at() is None


def test_the_delay_counts_from_the_change_not_from_when_it_was_read(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    clock = Clock()
    write(path, topology(1, "db-instance-1", db_instance_1="writer"))
    reader = TopologyReader(path, dns_ttl_seconds=5, clock=clock)
    reader.load()
    write(path, topology(2, "db-instance-2", changed_at=990.0, db_instance_2="writer"))
    reader.refresh()
    assert reader.current().writer == "db-instance-2"


def test_two_changes_within_the_ttl_become_visible_in_turn(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    clock = Clock()
    write(path, topology(1, "db-instance-1", db_instance_1="writer"))
    reader = TopologyReader(path, dns_ttl_seconds=5, clock=clock)
    reader.load()
    write(path, topology(2, "db-instance-2", changed_at=1000.0, db_instance_2="writer"))
    reader.refresh()
    write(path, topology(3, "db-instance-1", changed_at=1002.0, db_instance_1="writer"))
    reader.refresh()
    clock.now = 1006.0
    assert reader.current().writer == "db-instance-2"
    clock.now = 1007.0
    assert reader.current().writer == "db-instance-1"


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    write(path, topology(1, "db-instance-1", db_instance_1="writer"))
    reader = TopologyReader(path, dns_ttl_seconds=5, clock=Clock())
    reader.load()
    assert reader.refresh() is None


def test_a_broken_file_keeps_the_last_good_topology_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    clock = Clock()
    write(path, topology(1, "db-instance-1", db_instance_1="writer"))
    reader = TopologyReader(path, dns_ttl_seconds=0, clock=clock)
    reader.load()
    path.write_text("{not json")
    assert reader.refresh() is None
    assert reader.problem is not None
    assert "not a topology file" in reader.problem
    assert reader.current().writer == "db-instance-1"
    path.unlink()
    assert reader.refresh() is None
    assert reader.current().writer == "db-instance-1"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"kind": "cluster"}, "kind 'cluster'"),
        ({"writer": "db-instance-9"}, "'db-instance-9' is not among the instances"),
        ({"instances": [{"name": "x", "host": "h", "port": 1, "role": "primary"}]}, "role 'primary'"),
        ({"generation": None}, "TypeError"),
    ],
)
def test_a_topology_that_breaks_the_contract_is_refused_with_the_reason(
    change: dict[str, Any], problem: str
) -> None:
    data = {**topology(1, "db-instance-1", db_instance_1="writer"), **change}
    with pytest.raises(ValueError, match="not a topology file") as raised:
        parse_topology(json.dumps(data))
    assert problem in str(raised.value)


def test_readable_defaults_by_role() -> None:
    data = topology(1, "db-instance-1", db_instance_1="writer", db_instance_2="standby")
    parsed = parse_topology(json.dumps(data))
    assert [(i.name, i.readable) for i in parsed.instances] == [
        ("db-instance-1", True),
        ("db-instance-2", False),
    ]
    assert parsed.readable_replicas == []
