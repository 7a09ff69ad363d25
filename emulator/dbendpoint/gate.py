"""The gate: what happens between the client's StartupMessage and the splice.

The endpoint itself answers SSLRequest and GSSENCRequest, routes the connection and forwards
CancelRequests; for every StartupMessage it asks the gate for the connection to splice the client to.
The default gate forwards the startup packet unchanged (PostgreSQL authenticates the client itself);
the IAM gate (iamgate.py) checks an IAM token first, when IAM database authentication is enabled.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from emulator.dbendpoint.settings import EndpointSettings
from emulator.dbendpoint.startup import StartupPacket
from emulator.dbendpoint.streams import ClientStream, UpstreamStream
from emulator.dbendpoint.topology import Instance


class GateRefused(Exception):
    """The gate turns the client away: the endpoint sends ErrorResponse (severity FATAL, this
    SQLSTATE and message, extra fields by code letter) and closes both connections."""

    def __init__(self, code: str, message: str, **fields: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields


class Gate(Protocol):
    async def connect(
        self, startup: StartupPacket, client: ClientStream, instance: Instance, upstream: UpstreamStream
    ) -> UpstreamStream:
        """The connection to splice the client to.

        startup: the client's StartupMessage (raw bytes, parameters).
        client: the client's connection (TLS already done: client.tls); read typed messages with
            client.read_message(), answer with client.write() and client.drain().
        instance: where the endpoint's name points for this connection.
        upstream: a plain TCP connection to instance, opened when the client connected (a refused
            connection closed the client at once), nothing sent on it yet. Return it (or another
            connection, closing this one); whatever the server sends on the returned connection from
            then on goes to the client unchanged, and is watched for BackendKeyData unless the gate
            sets upstream.backend_key itself.
        Raise GateRefused to turn the client away with a FATAL error; any other exception closes
        both connections.
        """
        ...


class PassThroughGate:
    """PostgreSQL sees the client's own startup packet and authenticates it."""

    async def connect(
        self, startup: StartupPacket, client: ClientStream, instance: Instance, upstream: UpstreamStream
    ) -> UpstreamStream:
        upstream.writer.write(startup.raw)
        await upstream.writer.drain()
        return upstream


# The IAM gate's module and factory: make_gate(settings: EndpointSettings) -> Gate.
IAM_GATE_MODULE = "emulator.dbendpoint.iamgate"


def make_gate(settings: EndpointSettings) -> Gate:
    if not settings.iam_database_authentication:
        return PassThroughGate()
    try:
        module = importlib.import_module(IAM_GATE_MODULE)
    except ImportError as exc:
        raise ValueError(
            f"iam_database_authentication needs {IAM_GATE_MODULE}, which is not installed: {exc}"
        ) from exc
    gate: Gate = module.make_gate(settings)
    return gate
