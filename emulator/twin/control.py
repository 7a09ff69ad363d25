"""How another shell acts on a running `up`: a small HTTP endpoint on the loopback, in the `up` process.

A failover must run where the cluster lives (the `up` process holds its servers, the old writer's
rejoin and the topology's generation), and its caller wants the answer: what was promoted and how
long each step took, or why it could not be done. The proxy already answers on HTTP (/stats); this
is the same, for commands. Its URL carries a random token and goes only into `up`'s env file
(LOCAL_TWIN_CONTROL_URL, readable by its owner only), so other local users cannot fail the stack over.

    GET  <url>                                ->  200 {"pid": the `up` process's id}
    POST <url>/failover  {"to": "NAME" | null}  ->  200 the FailoverReport's JSON
                                                     409 {"error": "..."} when it cannot be done
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import threading
import urllib.error
import urllib.request
from typing import Any, Protocol

from emulator.errors import ComponentError
from emulator.net import LOOPBACK, QuietHTTPServer
from emulator.stack.cluster import FailoverReport

CONTROL_URL = "LOCAL_TWIN_CONTROL_URL"
# A failover takes well under a second here; the deadline covers a slow machine's promotion.
REQUEST_TIMEOUT = 120.0
# A running `up` answers its ping at once; a dead one's port refuses at once.
PING_TIMEOUT = 5.0


class Controlled(Protocol):
    def failover(self, to: str | None = None) -> FailoverReport: ...


class ControlServer:
    """Serves commands for one twin until stop()."""

    def __init__(self, twin: Controlled) -> None:
        self._twin = twin
        self._token = secrets.token_urlsafe(16)
        handler = _handler(twin, f"/{self._token}")
        self._server = QuietHTTPServer((LOOPBACK, 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-twin-control", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/{self._token}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _handler(twin: Controlled, prefix: str) -> type[http.server.BaseHTTPRequestHandler]:
    # One failover at a time: a second one waits for the first (the cluster serialises them too).
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != prefix:
                self._answer(404, {"error": "no such command"})
                return
            self._answer(200, {"pid": os.getpid()})

        def do_POST(self) -> None:
            if self.path != f"{prefix}/failover":
                self._answer(404, {"error": "no such command"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                to = _target(json.loads(self.rfile.read(length) or b"{}"))
            except ValueError as exc:
                self._answer(400, {"error": f"bad request: {exc}"})
                return
            try:
                with lock:
                    report = twin.failover(to)
            except ComponentError as exc:
                self._answer(409, {"error": str(exc)})
                return
            self._answer(200, report.to_json())

        def _answer(self, status: int, data: dict[str, Any]) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: `up` prints what happened itself."""

    return Handler


def _target(body: Any) -> str | None:
    to = body.get("to") if isinstance(body, dict) else None
    if to is not None and not isinstance(to, str):
        raise ValueError("'to' is an instance name")
    return to


class ControlError(Exception):
    """The running twin refused the command, or could not be reached."""


def running_pid(url: str) -> int | None:
    """The pid of the `up` whose control URL this is, if it still runs (None: nothing answers)."""
    if not url.startswith("http://"):
        return None
    try:
        with urllib.request.urlopen(url, timeout=PING_TIMEOUT) as answer:  # noqa: S310 - http:// only
            body = json.loads(answer.read())
    except (OSError, ValueError):
        # Refused, reset, timed out, or another server on a reused port (404, or not JSON).
        return None
    pid = body.get("pid") if isinstance(body, dict) else None
    return pid if isinstance(pid, int) else None


def request_failover(url: str, to: str | None = None) -> FailoverReport:
    """Ask the `up` at url (LOCAL_TWIN_CONTROL_URL) to fail over; its report."""
    if not url.startswith("http://"):
        raise ControlError(f"{CONTROL_URL} is not the twin's http:// URL: {url!r}")
    request = urllib.request.Request(  # noqa: S310 - http:// only, checked above
        f"{url}/failover",
        data=json.dumps({"to": to}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as answer:  # noqa: S310 - loopback
            return FailoverReport.from_json(json.loads(answer.read()))
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            message = exc.reason
        raise ControlError(str(message)) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ControlError(f"no running twin answers at {url}: {exc}") from exc
