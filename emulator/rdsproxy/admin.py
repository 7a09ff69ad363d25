"""The proxy's HTTP endpoint on stats_port: /stats, /metrics, /sessions and /config, as JSON, and
POST /reset-peaks (the peaks in /stats start again from the current values, e.g. for each test).

Like PgBouncer's SHOW commands: what the proxy is doing right now, for tests, the demo and people.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any, Protocol

from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.metrics import NAMESPACE, MetricsPublisher


class Described(Protocol):
    def describe(self) -> dict[str, Any]: ...


class Observed(Protocol):
    """What the endpoint shows (the proxy's listener)."""

    config: ProxyConfig
    metrics: MetricsPublisher

    @property
    def sessions(self) -> Iterable[Described]: ...

    def snapshot(self) -> dict[str, Any]: ...

    def reset_peaks(self) -> None: ...


class AdminEndpoint:
    def __init__(self, proxy: Observed) -> None:
        self.proxy = proxy
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def _answer(self, method: str, path: str) -> tuple[str, str]:
        proxy = self.proxy
        if path.startswith("/reset-peaks"):
            if method != "POST":
                return "405 Method Not Allowed", json.dumps({"error": "POST /reset-peaks"})
            proxy.reset_peaks()
            return "200 OK", json.dumps(proxy.snapshot())
        if path.startswith("/stats"):
            return "200 OK", json.dumps(proxy.snapshot())
        if path.startswith("/metrics"):
            metrics = proxy.metrics
            body = {
                "namespace": NAMESPACE,
                "dimensions": metrics.dimension_sets(),
                "values": metrics.values(),
                # Every dimension set's values: per endpoint (DS2), instance (DS3), role (DS4).
                "rows": [
                    {"dimensions": {d["Name"]: d["Value"] for d in row.dimensions}, "values": row.values}
                    for row in metrics.rows()
                ],
            }
            return "200 OK", json.dumps(body)
        if path.startswith("/sessions"):
            return "200 OK", json.dumps([session.describe() for session in proxy.sessions])
        if path.startswith("/config"):
            return "200 OK", proxy.config.to_json()
        return "404 Not Found", json.dumps(
            {"error": "try /stats, /metrics, /sessions, /config or POST /reset-peaks"}
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            parts = request.split(b" ", 2)
            method, path = (parts[0].decode(), parts[1].decode()) if len(parts) == 3 else ("GET", "/")
            status, body = self._answer(method, path)
            payload = body.encode()
            head = f"HTTP/1.0 {status}\r\nContent-Type: application/json\r\n"
            head += f"Content-Length: {len(payload)}\r\n\r\n"
            writer.write(head.encode() + payload)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
