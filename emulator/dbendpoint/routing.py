"""Which instance a name points at: what DNS answers for each RDS endpoint.

- the writer (cluster) endpoint: the writer;
- the reader endpoint: the readable replicas in turn ("If the cluster only contains a primary instance
  and no Aurora Replicas, the reader endpoint connects to the primary instance": Aurora User Guide,
  Aurora.Endpoints.Reader); in turn by default, so tests can count, or at random as AWS's DNS does
  ("DNS-based random assignment of instance IP addresses to new read-only connections": Aurora MySQL
  DBA Handbook, "DNS endpoints");
- an instance endpoint: that instance, whatever its role.
"""

from __future__ import annotations

import itertools
import random
from typing import Literal, Protocol

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


Balancing = Literal["round-robin", "random"]
BALANCING: tuple[Balancing, ...] = ("round-robin", "random")


class ReaderRoute:
    name = "reader"

    def __init__(self, balancing: Balancing = "round-robin") -> None:
        self.balancing = balancing
        self._turn = itertools.count()

    def pick(self, topology: Topology) -> Instance | None:
        replicas = topology.readable_replicas
        if not replicas:
            return topology.writer_instance
        if self.balancing == "random":
            return random.choice(replicas)  # noqa: S311 - load spreading, not security
        return replicas[next(self._turn) % len(replicas)]


class InstanceRoute:
    def __init__(self, instance_name: str) -> None:
        self.instance_name = instance_name

    @property
    def name(self) -> str:
        return f"instance {self.instance_name}"

    def pick(self, topology: Topology) -> Instance | None:
        return topology.instance(self.instance_name)
