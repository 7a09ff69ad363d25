"""The gate contract the IAM gate builds on: it sees the startup packet, the client (TLS state, the
address it connected to) and an open connection to the routed instance; it may refuse in its own
words, and whatever connection it returns is spliced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from emulator.dbendpoint.gate import GateRefused, PassThroughGate
from emulator.dbendpoint.server import DatabaseEndpoints
from emulator.dbendpoint.settings import EndpointSettings
from emulator.dbendpoint.startup import StartupPacket
from emulator.dbendpoint.streams import ClientStream, UpstreamStream
from emulator.dbendpoint.topology import Instance

from .conftest import TLS_HOSTNAMES, Lab, conninfo, instance, topology, write_topology

pytestmark = pytest.mark.integration


class RecordingGate:
    """Refuses the user "blocked"; lets the others through, noting what it was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, bool, tuple[str, int], str, bool]] = []

    async def connect(
        self, startup: StartupPacket, client: ClientStream, instance: Instance, upstream: UpstreamStream
    ) -> UpstreamStream:
        self.seen.append(
            (startup.user, client.tls, client.local_address, instance.name, upstream.instance == instance)
        )
        if startup.user == "blocked":
            raise GateRefused("28000", 'PAM authentication failed for user "blocked"')
        return await PassThroughGate().connect(startup, client, instance, upstream)


def test_a_gate_sees_the_session_refuses_in_its_own_words_or_lets_it_through(
    lab: Lab, tmp_path: Path
) -> None:
    topology_file = tmp_path / "topology.json"
    write_topology(
        topology_file, topology("db-instance-1", instance("db-instance-1", lab.servers["a"], "writer"))
    )
    certificate = lab.ca.issue_server("dbendpoint-gate", TLS_HOSTNAMES)
    settings = EndpointSettings(
        topology_file=str(topology_file),
        tls_cert_file=str(certificate.cert_path),
        tls_key_file=str(certificate.key_path),
    )
    gate = RecordingGate()

    async def scenario() -> None:
        endpoints = DatabaseEndpoints(settings, gate)
        await endpoints.start()
        port = endpoints.ports()["writer"]
        try:
            with pytest.raises(psycopg.OperationalError) as refused:
                await psycopg.AsyncConnection.connect(conninfo(port, user="blocked", sslmode="require"))
            assert 'FATAL:  PAM authentication failed for user "blocked"' in str(refused.value)
            async with await psycopg.AsyncConnection.connect(conninfo(port, sslmode="disable")) as conn:
                cursor = await conn.execute("SELECT current_user")
                assert await cursor.fetchone() == ("app",)
        finally:
            await endpoints.stop()
        assert gate.seen == [
            ("blocked", True, ("127.0.0.1", port), "db-instance-1", True),
            ("app", False, ("127.0.0.1", port), "db-instance-1", True),
        ]

    asyncio.run(scenario())
