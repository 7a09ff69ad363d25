"""Lambda's Invoke API over HTTP, so boto3's Lambda client runs functions locally.

`boto3.client("lambda", endpoint_url=api.endpoint_url).invoke(FunctionName=..., Payload=...)`
is the same client code users point at AWS: RequestResponse answers with the handler's result (and
X-Amz-Function-Error when it failed), Event answers 202 at once and runs the function in the
background (retrying while throttled, as Lambda's async queue does), DryRun answers 204. Every other
Lambda API call (get_function_configuration, list_functions, ...) is forwarded to the AWS emulator
when one is given, so AWS_ENDPOINT_URL_LAMBDA can point the whole Lambda API here.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulator.awslambda.function import LambdaFunction, Throttled
from emulator.net import LOOPBACK

_INVOKE = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
# An Event invocation that stays throttled this long is dropped (Lambda keeps trying for hours).
EVENT_RETRY_SECONDS = 60


class InvokeApi:
    """Serves the functions given; start() picks a free loopback port, stop() ends it."""

    def __init__(self, functions: Mapping[str, LambdaFunction], *, forward_to: str | None = None) -> None:
        self.functions = dict(functions)
        # The AWS emulator's URL, for every call that is not Invoke.
        self.forward_to = forward_to
        self._server = ThreadingHTTPServer((LOOPBACK, 0), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="lambda-invoke-api", daemon=True
        )
        self._stopping = threading.Event()
        self._background: list[threading.Thread] = []

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._background:
            thread.join(timeout=30)

    def find(self, name: str) -> LambdaFunction | None:
        # FunctionName may be a name, a partial or full ARN, optionally with a qualifier.
        name = urllib.parse.unquote(name)
        if name.startswith("arn:"):
            name = name.split(":")[6]
        return self.functions.get(name.split(":")[0])

    def run_event(self, function: LambdaFunction, event: Any) -> None:
        def run() -> None:
            deadline = time.monotonic() + EVENT_RETRY_SECONDS
            while not self._stopping.is_set() and time.monotonic() < deadline:
                try:
                    function.invoke(event)
                except Throttled:
                    self._stopping.wait(0.05)
                else:
                    return

        thread = threading.Thread(target=run, name="lambda-event", daemon=True)
        # Keep only the ones still running: a long `up` takes many Event invocations.
        self._background = [t for t in self._background if t.is_alive()] + [thread]
        thread.start()


def _handler_class(api: InvokeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, kind: str, message: str, **extra: str) -> None:
            body = json.dumps({"Type": "User", "message": message, **extra}).encode()
            self._send(status, body, {"x-amzn-ErrorType": kind})

        def _forward(self, raw: bytes) -> None:
            if api.forward_to is None:
                self._error(HTTPStatus.NOT_FOUND, "UnknownOperationException", f"no route for {self.path}")
                return
            hop_by_hop = {"host", "content-length", "connection", "transfer-encoding"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop}
            request = urllib.request.Request(  # noqa: S310 - our own http:// AWS emulator URL
                api.forward_to + self.path, data=raw or None, headers=headers, method=self.command
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
                    status, body, reply = answer.status, answer.read(), answer.headers
            except urllib.error.HTTPError as error:
                status, body, reply = error.code, error.read(), error.headers
            self.send_response(status)
            for name, value in reply.items():
                if name.lower() not in hop_by_hop | {"server", "date"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._forward(b"")

        def do_PUT(self) -> None:
            self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        def do_DELETE(self) -> None:
            self._forward(b"")

        def do_POST(self) -> None:
            match = _INVOKE.match(urllib.parse.urlsplit(self.path).path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if match is None:
                self._forward(raw)
                return
            function = api.find(match["name"])
            if function is None and api.forward_to is not None:
                # moto answers for functions the kit does not run (it says why it cannot run them).
                self._forward(raw)
                return
            if function is None:
                self._error(
                    HTTPStatus.NOT_FOUND, "ResourceNotFoundException", f"Function not found: {match['name']}"
                )
                return
            try:
                event = json.loads(raw) if raw.strip() else {}
            except ValueError as exc:
                self._error(
                    HTTPStatus.BAD_REQUEST,
                    "InvalidRequestContentException",
                    f"Could not parse request body into json: {exc}",
                )
                return
            kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
            if kind == "DryRun":
                self._send(HTTPStatus.NO_CONTENT, b"")
                return
            if kind == "Event":
                api.run_event(function, event)
                self._send(HTTPStatus.ACCEPTED, b"")
                return
            try:
                result = function.invoke(event)
            except Throttled as exc:
                self._error(
                    HTTPStatus.TOO_MANY_REQUESTS, "TooManyRequestsException", str(exc), Reason=exc.reason
                )
                return
            headers = {"X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": result.request_id}
            if result.function_error:
                headers["X-Amz-Function-Error"] = result.function_error
            self._send(HTTPStatus.OK, result.payload, headers)

    return Handler
