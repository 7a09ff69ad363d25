"""The proxy's log in RDS Proxy's format (CloudWatch log group /aws/rds/proxy/<proxy-name>).

AWS says the format "is subject to change"; these lines follow what real RDS Proxy logs show (see
the reference, section 2.4), so that people grepping their CloudWatch logs find the same text here.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from emulator.rdsproxy.dbconn import ServerConnection
    from emulator.rdsproxy.session import ClientSession


class ProxyLog:
    def __init__(
        self, stream: TextIO | None = None, *, debug: bool = False, endpoint: str = "default"
    ) -> None:
        self.stream = stream or sys.stderr
        self.debug_enabled = debug
        self.endpoint = endpoint
        # Extra receivers of every line (the CloudWatch Logs publisher, tests).
        self.sinks: list[Callable[[str], None]] = []

    def _write(self, level: str, text: str) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        line = f"{now}Z [{level}] {text}"
        self.stream.write(line + "\n")
        self.stream.flush()
        for sink in self.sinks:
            sink(line)

    def info(self, text: str) -> None:
        self._write("INFO", text)

    def warn(self, text: str) -> None:
        self._write("WARN", text)

    def debug(self, text: str) -> None:
        if self.debug_enabled:
            self._write("DEBUG", f"[proxyEndpoint={self.endpoint}] {text}")

    def _client(self, session: ClientSession) -> str:
        return f"[{self.endpoint}] [clientConnection={session.id}]"

    def client_connected(self, session: ClientSession) -> None:
        self.info(
            f"[{self.endpoint}] [clientConnection={session.id}] A new client connected from {session.peer}."
        )

    def client_refused(self, session: ClientSession, reason: str) -> None:
        self.info(f"{self._client(session)} The client connection was refused. Reason: {reason}")

    def client_closed(self, session: ClientSession, reason: str) -> None:
        self.info(f"{self._client(session)} The client connection closed. Reason: {reason}")

    def db_opened(self, conn: ServerConnection, target: str) -> None:
        where = f"from the proxy to the database at {target}"
        self.info(f"[dbConnection={conn.id}] A TCP connection was established {where}.")

    def db_closed(self, conn: ServerConnection, reason: str) -> None:
        self.info(f"[dbConnection={conn.id}] The database connection closed. Reason: {reason}")
