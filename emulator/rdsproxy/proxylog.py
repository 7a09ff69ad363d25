"""The proxy's log in RDS Proxy's format (CloudWatch log group /aws/rds/proxy/<proxy-name>).

AWS says the format "is subject to change"; these lines follow what real RDS Proxy logs show (see
the reference, section 2.4), so that people grepping their CloudWatch logs find the same text here.
Every line is written here, and the ones tools read back (the pin line) come with their pattern.
"""

from __future__ import annotations

import datetime
import re
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

PINNED = (
    "[proxyEndpoint={endpoint}] [clientConnection={client}] The client session was pinned to the database "
    "connection [dbConnection={db}] for the remainder of the session. The proxy can't reuse this "
    "connection until the session ends. Reason: {reason}"
)
# A pin line as the report reads it back (from this log or from CloudWatch).
PINNED_PATTERN = re.compile(r"\[WARN\].*The client session was pinned.*Reason: (?P<reason>.*)$")
# A pin reason's head and digest (pinning.REASON_SETTINGS). Here, not beside the reason, so that
# readers of the log (the twin in `up`) do not load the proxy's per-message modules, compiled or not.
DIGEST_PATTERN = re.compile(r'^(?P<head>.*?) Digest: "(?P<digest>.*)"\.$')
WOULD_PIN = (
    "[{endpoint}] [clientConnection={client}] If this prepared statement runs, the client session will be "
    "pinned. Reason: {reason}"
)


DEBUG_LOGGING_SECONDS = 24 * 3600


class Client(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def peer(self) -> str: ...


class Database(Protocol):
    @property
    def id(self) -> int: ...


class ProxyLog:
    def __init__(
        self, stream: TextIO | None = None, *, debug: bool = False, endpoint: str = "default"
    ) -> None:
        self.stream = stream or sys.stderr
        self.debug_enabled = debug
        # "RDS Proxy automatically turns this setting off 24 hours after you enable it."
        self._debug_until = time.monotonic() + DEBUG_LOGGING_SECONDS
        self.endpoint = endpoint
        # Extra receivers of every line (the CloudWatch Logs publisher, tests).
        self.sinks: list[Callable[[str], None]] = []

    def for_endpoint(self, endpoint: str) -> ProxyLog:
        """The same log (stream, debug setting, receivers) for the lines of another proxy endpoint."""
        log = ProxyLog(self.stream, debug=self.debug_enabled, endpoint=endpoint)
        log._debug_until = self._debug_until
        log.sinks = self.sinks
        return log

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
        if self.debug_enabled and time.monotonic() < self._debug_until:
            self._write("DEBUG", f"[proxyEndpoint={self.endpoint}] {text}")

    def _client(self, client: Client) -> str:
        return f"[{self.endpoint}] [clientConnection={client.id}]"

    def client_connected(self, client: Client) -> None:
        self.info(f"{self._client(client)} A new client connected from {client.peer}.")

    def client_refused(self, client: Client, reason: str) -> None:
        self.info(f"{self._client(client)} The client connection was refused. Reason: {reason}")

    def client_closed(self, client: Client, reason: str) -> None:
        self.info(f"{self._client(client)} The client connection closed. Reason: {reason}")

    def pinned(self, client: Client, db: Database, reason: str) -> None:
        self.warn(PINNED.format(endpoint=self.endpoint, client=client.id, db=db.id, reason=reason))

    def would_pin(self, client: Client, reason: str) -> None:
        self.info(WOULD_PIN.format(endpoint=self.endpoint, client=client.id, reason=reason))

    def db_opened(self, local: str, target: str) -> None:
        self.info(f"A TCP connection was established from the proxy at {local} to the database at {target}.")

    def db_closed(self, conn: Database, reason: str) -> None:
        self.info(f"[dbConnection={conn.id}] The database connection closed. Reason: {reason}")

    def db_released(self, conn: Database, why: str) -> None:
        self.info(f"[dbConnection={conn.id}] {why}")
