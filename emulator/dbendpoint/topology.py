"""The topology file the cluster writes, read as DNS shows it: a change reaches new connections only
dns_ttl_seconds after it was made.

The file (the design's section 1) is replaced atomically on every change; this reader stat()s it
(cheap: on every new connection and on a timer) and parses it only when it changed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("writer", "reader", "standby", "fenced")
KINDS = ("single", "aurora", "multi-az")


@dataclass(frozen=True)
class Instance:
    """One PostgreSQL server, at its own address."""

    name: str
    host: str
    port: int
    role: str
    readable: bool


@dataclass(frozen=True)
class Topology:
    generation: int
    kind: str
    writer: str | None
    changed_at: float
    instances: tuple[Instance, ...]

    def instance(self, name: str) -> Instance | None:
        for instance in self.instances:
            if instance.name == name:
                return instance
        return None

    @property
    def writer_instance(self) -> Instance | None:
        return self.instance(self.writer) if self.writer else None

    @property
    def readable_replicas(self) -> list[Instance]:
        return [i for i in self.instances if i.role == "reader" and i.readable]


def parse_topology(text: str) -> Topology:
    """The file's JSON as a Topology; ValueError, naming the problem, for anything else."""
    try:
        data = json.loads(text)
        instances = tuple(_instance(item) for item in data["instances"])
        topology = Topology(
            generation=int(data["generation"]),
            kind=str(data.get("kind", "single")),
            writer=str(data["writer"]) if data.get("writer") else None,
            changed_at=float(data.get("changed_at") or 0.0),
            instances=instances,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a topology file: {type(exc).__name__}: {exc}") from exc
    if topology.kind not in KINDS:
        raise ValueError(f"not a topology file: kind {topology.kind!r} is not one of {', '.join(KINDS)}")
    if topology.writer is not None and topology.writer_instance is None:
        raise ValueError(f"not a topology file: the writer {topology.writer!r} is not among the instances")
    return topology


def _instance(item: dict[str, Any]) -> Instance:
    role = str(item["role"])
    if role not in ROLES:
        raise ValueError(f"instance {item.get('name')!r}: role {role!r} is not one of {', '.join(ROLES)}")
    return Instance(
        name=str(item["name"]),
        host=str(item["host"]),
        port=int(item["port"]),
        role=role,
        readable=bool(item.get("readable", role in ("writer", "reader"))),
    )


@dataclass(frozen=True)
class _Change:
    topology: Topology
    visible_at: float


class TopologyReader:
    """The topology as new connections see it (current()) and as the file says it now (latest()).

    A change becomes visible dns_ttl_seconds after the file's changed_at (when the file has none,
    after the moment this reader saw it): until then new connections keep going to the old addresses,
    as clients do that resolved the name just before the change. The first topology read is visible
    at once.
    """

    def __init__(self, path: Path, *, dns_ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.dns_ttl_seconds = dns_ttl_seconds
        self._clock = clock
        self._signature: tuple[int, int, int] | None = None
        self._visible: Topology | None = None
        self._pending: list[_Change] = []
        # The last problem reading the file (kept so that a bad write is reported once, not per poll).
        self.problem: str | None = None

    def load(self) -> Topology:
        """The first read: the file must be there and valid (the cluster writes it before we start)."""
        signature = file_signature(self.path)
        topology = parse_topology(self.path.read_text())
        self._signature = signature
        self._visible = topology
        return topology

    def refresh(self) -> Topology | None:
        """stat() the file; read it when it changed. The new topology when there is one, else None.
        A file that disappeared or does not parse keeps the last good topology (problem says why)."""
        try:
            signature = file_signature(self.path)
            if signature == self._signature:
                return None
            topology = parse_topology(self.path.read_text())
        except (OSError, ValueError) as exc:
            self.problem = f"{self.path}: {exc}"
            return None
        self.problem = None
        self._signature = signature
        if topology == self.latest():
            return None
        changed_at = topology.changed_at or self._clock()
        self._pending.append(_Change(topology, changed_at + self.dns_ttl_seconds))
        return topology

    def latest(self) -> Topology:
        """What the file says now, delay or not."""
        if self._pending:
            return self._pending[-1].topology
        assert self._visible is not None, "load() first"
        return self._visible

    def current(self) -> Topology:
        """What a client resolving the names now would reach: the newest change whose delay is over."""
        now = self._clock()
        while self._pending and self._pending[0].visible_at <= now:
            self._visible = self._pending.pop(0).topology
        assert self._visible is not None, "load() first"
        return self._visible

    def next_visible_at(self) -> float | None:
        """When the next pending change becomes visible (the clock's time), or None."""
        return self._pending[0].visible_at if self._pending else None


def file_signature(path: Path) -> tuple[int, int, int]:
    """What refresh() compares: inode, modification time and size (an os.replace changes the inode)."""
    stat = os.stat(path)
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)
