"""Which instance a name points at: what DNS answers for each RDS endpoint.

- the writer (cluster) endpoint: the writer;
- the reader endpoint: the readable replicas in turn ("If the cluster only contains a primary instance
  and no Aurora Replicas, the reader endpoint connects to the primary instance": Aurora User Guide,
  Aurora.Endpoints.Reader); AWS spreads by DNS, here strictly in turn, so tests can count;
- an instance endpoint: that instance, whatever its role.
"""

from __future__ import annotations

import itertools
from typing import Protocol

from emulator.dbendpoint.topology import Instance, Topology


class Route(Protocol):
    """One endpoint's DNS record."""

    @property
    def name(self) -> str: ...

    def pick(self, topology: Topology) -> Instance | None:
        """The instance a new connection reaches, or None when the name points nowhere."""
        ...


class WriterRoute:
    name = "writer"

    def pick(self, topology: Topology) -> Instance | None:
        return topology.writer_instance


class ReaderRoute:
    name = "reader"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def pick(self, topology: Topology) -> Instance | None:
        replicas = topology.readable_replicas
        if not replicas:
            return topology.writer_instance
        return replicas[next(self._turn) % len(replicas)]


class InstanceRoute:
    def __init__(self, instance_name: str) -> None:
        self.instance_name = instance_name

    @property
    def name(self) -> str:
        return f"instance {self.instance_name}"

    def pick(self, topology: Topology) -> Instance | None:
        return topology.instance(self.instance_name)
