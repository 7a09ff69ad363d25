"""All of a database's endpoints in one process: the writer endpoint, the reader endpoint (Aurora),
one endpoint per instance, the topology they share, and the ready file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from pathlib import Path
from typing import Any

from emulator.dbendpoint.cancels import CancelRoutes
from emulator.dbendpoint.endpoint import EndpointListener
from emulator.dbendpoint.gate import Gate, make_gate
from emulator.dbendpoint.routing import InstanceRoute, ReaderRoute, Route, WriterRoute
from emulator.dbendpoint.settings import EndpointSettings
from emulator.dbendpoint.topology import Topology, TopologyReader

log = logging.getLogger("emulator.dbendpoint")


class DatabaseEndpoints:
    def __init__(self, settings: EndpointSettings, gate: Gate | None = None) -> None:
        self.settings = settings
        self.topology = TopologyReader(Path(settings.topology_file), dns_ttl_seconds=settings.dns_ttl_seconds)
        self.gate = gate if gate is not None else make_gate(settings)
        self.cancels = CancelRoutes()
        self.tls_context: ssl.SSLContext | None = None
        if settings.tls_available:
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls_context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        self.writer: EndpointListener | None = None
        self.reader: EndpointListener | None = None
        self.instances: dict[str, EndpointListener] = {}
        self._poller: asyncio.Task[None] | None = None
        self._ready_file: str | None = None
        self._reported_problem: str | None = None
        self._visible_generation: int | None = None

    def current(self) -> Topology:
        """The topology new connections see: the file stat()ed now, its changes after the delay."""
        self._refresh()
        current = self.topology.current()
        if current.generation != self._visible_generation:
            if self._visible_generation is not None:
                log.info(
                    f"Topology generation {current.generation} visible:"
                    f" new connections reach writer {current.writer}."
                )
            self._visible_generation = current.generation
        return current

    def _refresh(self) -> None:
        changed = self.topology.refresh()
        if changed is not None:
            log.info(
                f"Topology generation {changed.generation}: writer {changed.writer}; new connections"
                f" follow in {self.settings.dns_ttl_seconds:g} s (the DNS TTL)."
            )
        problem = self.topology.problem
        if problem and problem != self._reported_problem:
            log.warning(f"Keeping the last topology: {problem}")
        self._reported_problem = problem

    def _listener(self, route: Route) -> EndpointListener:
        return EndpointListener(
            route,
            settings=self.settings,
            topology=self.current,
            gate=self.gate,
            cancels=self.cancels,
            tls_context=self.tls_context,
        )

    async def start(self, ready_file: str | None = None) -> None:
        topology = self.topology.load()
        self._ready_file = ready_file
        self.writer = self._listener(WriterRoute())
        await self.writer.start(self.settings.writer_port)
        if topology.kind == "aurora":
            self.reader = self._listener(ReaderRoute(self.settings.reader_balancing))
            await self.reader.start(self.settings.reader_port)
        await self._add_instances(topology)
        self._write_ready_file()
        self._poller = asyncio.create_task(self._poll())

    async def _add_instances(self, topology: Topology) -> None:
        for instance in topology.instances:
            if instance.name not in self.instances:
                listener = self._listener(InstanceRoute(instance.name))
                await listener.start(self.settings.instance_ports.get(instance.name, 0))
                self.instances[instance.name] = listener

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_seconds)
            self.current()
            known = len(self.instances)
            try:
                await self._add_instances(self.topology.latest())
            except OSError as exc:
                # A configured port already taken: the other endpoints go on; retried next poll.
                log.warning(f"Could not open an instance endpoint: {exc}")
            if len(self.instances) != known:
                self._write_ready_file()

    def ports(self) -> dict[str, Any]:
        """The ready file's content: {"writer": port, "reader": port or null, "instances": {name: port}}."""
        assert self.writer is not None
        return {
            "writer": self.writer.port,
            "reader": self.reader.port if self.reader is not None else None,
            "instances": {name: listener.port for name, listener in self.instances.items()},
        }

    def _write_ready_file(self) -> None:
        if not self._ready_file:
            return
        # Written whole and then renamed: whoever waits for the file never reads it half-written.
        partial = f"{self._ready_file}.partial"
        with open(partial, "w") as handle:
            json.dump(self.ports(), handle)
        os.replace(partial, self._ready_file)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        listeners = [self.writer, self.reader, *self.instances.values()]
        await asyncio.gather(*(listener.stop() for listener in listeners if listener is not None))
