"""Lambda's API over HTTP for the twin's functions, so boto3's Lambda client runs them locally.

`boto3.client("lambda", endpoint_url=api.endpoint_url).invoke(FunctionName=..., Payload=...)`
is the same client code users point at AWS: RequestResponse answers with the handler's result (and
X-Amz-Function-Error when it failed; with LogType=Tail, the last 4 KB of the invocation's log in
X-Amz-Log-Result), Event answers 202 at once and runs the function in the background (retrying
while throttled, as Lambda's async queue does), DryRun answers 204. get_function,
get_function_configuration and list_functions know the twin's functions; a name the twin does not
run gets Lambda's ResourceNotFoundException. Every other Lambda API call is forwarded to the AWS
emulator when one is given, so AWS_ENDPOINT_URL_LAMBDA can point the whole Lambda API here.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import functools
import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from emulator.awslambda.function import LambdaFunction, Throttled
from emulator.awslambda.logs import tail
from emulator.net import LOOPBACK, QuietHTTPServer

_INVOKE = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
_FUNCTION = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)(?P<configuration>/configuration)?/?$")
_FUNCTIONS = re.compile(r"^/2015-03-31/functions/?$")
_HOP_BY_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding"})
# An Event invocation that stays throttled this long is dropped (Lambda keeps trying for hours).
EVENT_RETRY_SECONDS = 60


class InvokeApi:
    """Serves the functions given; start() picks a free loopback port, stop() ends it."""

    def __init__(self, functions: Mapping[str, LambdaFunction], *, forward_to: str | None = None) -> None:
        self.functions = dict(functions)
        # The AWS emulator's URL, for every call that is not Invoke.
        self.forward_to = forward_to
        self._server = QuietHTTPServer((LOOPBACK, 0), _handler_class(self))
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
        return self.functions.get(function_name(name))

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


def function_name(name: str) -> str:
    """FunctionName may be a name, a partial or full ARN, optionally with a qualifier."""
    name = urllib.parse.unquote(name)
    if name.startswith("arn:"):
        name = name.split(":")[6]
    return name.split(":")[0]


def _handler_class(api: InvokeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes: with Nagle's algorithm the body waits for the client's
        # delayed ACK (~40 ms on Linux) on every request of a kept-alive connection, as boto3's are.
        disable_nagle_algorithm = True

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
            body = json.dumps({"Type": "User", "Message": message, **extra}).encode()
            self._send(status, body, {"x-amzn-ErrorType": kind})

        def _not_found(self, name: str) -> None:
            """Lambda's answer for a function it does not have, with the ARN it would have had."""
            arn = name if name.startswith("arn:") else None
            if arn is None:
                sample = next(iter(api.functions.values()), None)
                region, account = (
                    (sample.config.region, sample.config.account_id)
                    if sample
                    else ("us-east-1", "123456789012")
                )
                arn = f"arn:aws:lambda:{region}:{account}:function:{function_name(name)}"
            self._error(HTTPStatus.NOT_FOUND, "ResourceNotFoundException", f"Function not found: {arn}")

        def _forward(self, raw: bytes) -> None:
            status, body, reply = self._ask_aws(raw)
            self.send_response(status)
            for name, value in reply.items():
                if name.lower() not in _HOP_BY_HOP | {"server", "date", "content-length"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _ask_aws(self, raw: bytes) -> tuple[int, bytes, Mapping[str, str]]:
            if api.forward_to is None:
                body = json.dumps({"Type": "User", "Message": f"no route for {self.path}"}).encode()
                return HTTPStatus.NOT_FOUND, body, {"x-amzn-ErrorType": "UnknownOperationException"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            request = urllib.request.Request(  # noqa: S310 - our own http:// AWS emulator URL
                api.forward_to + self.path, data=raw or None, headers=headers, method=self.command
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
                    return answer.status, answer.read(), dict(answer.headers.items())
            except urllib.error.HTTPError as error:
                return error.code, error.read(), dict(error.headers.items())

        def _json(self, document: Any) -> None:
            self._send(HTTPStatus.OK, json.dumps(document).encode())

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if _FUNCTIONS.match(path):
                self._list_functions()
                return
            match = _FUNCTION.match(path)
            if match is None:
                self._forward(b"")
                return
            function = api.find(match["name"])
            if function is None:
                self._not_found(match["name"])
            elif function.config.in_aws_api and api.forward_to is not None:
                # Terraform created it: the AWS API emulator answers with what was applied.
                self._forward(b"")
            elif match["configuration"]:
                self._json(describe(function))
            else:
                self._json(describe_with_code(function))

        def _list_functions(self) -> None:
            """The twin's functions; those the AWS API emulator knows, as it describes them."""
            known: list[dict[str, Any]] = []
            if api.forward_to is not None:
                status, body, _ = self._ask_aws(b"")
                if status == HTTPStatus.OK:
                    known = [
                        f for f in json.loads(body).get("Functions", []) if f["FunctionName"] in api.functions
                    ]
            names = {f["FunctionName"] for f in known}
            known += [describe(f) for name, f in api.functions.items() if name not in names]
            self._json({"Functions": known})

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
            if function is None:
                self._not_found(match["name"])
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
            if self.headers.get("X-Amz-Log-Type") == "Tail":
                headers["X-Amz-Log-Result"] = base64.b64encode(tail(result.log)).decode()
            self._send(HTTPStatus.OK, result.payload, headers)

    return Handler


def describe(function: LambdaFunction) -> dict[str, Any]:
    """get_function_configuration's answer for a function the twin runs from a code directory."""
    config = function.config
    size, digest = _code_digest(config.code_dir)
    answer: dict[str, Any] = {
        "FunctionName": config.name,
        "FunctionArn": config.arn,
        "Runtime": config.runtime,
        "Role": f"arn:aws:iam::{config.account_id}:role/local-twin-{config.name}",
        "Handler": config.handler,
        "CodeSize": size,
        "Description": f"run by the local twin from {config.code_dir}",
        "Timeout": int(config.timeout_seconds),
        "MemorySize": config.memory_mb,
        "LastModified": _STARTED,
        "CodeSha256": digest,
        "Version": "$LATEST",
        "Environment": {"Variables": dict(config.environment)},
        "TracingConfig": {"Mode": "PassThrough"},
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "EphemeralStorage": {"Size": 512},
    }
    return answer


def describe_with_code(function: LambdaFunction) -> dict[str, Any]:
    """get_function's answer: the configuration, where the code is, the reserved concurrency."""
    answer: dict[str, Any] = {
        "Configuration": describe(function),
        # Lambda answers with a presigned URL of the package; the twin runs the directory itself.
        "Code": {"RepositoryType": "S3", "Location": function.config.code_dir.resolve().as_uri()},
    }
    if function.config.reserved_concurrency is not None:
        answer["Concurrency"] = {"ReservedConcurrentExecutions": function.config.reserved_concurrency}
    return answer


_STARTED = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


@functools.cache
def _code_digest(code_dir: Path) -> tuple[int, str]:
    """The code's size and a SHA-256 over its files (Lambda's is the package's; the twin has none)."""
    digest = hashlib.sha256()
    size = 0
    for root, dirs, files in os.walk(code_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = Path(root) / name
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                size += len(data)
                digest.update(str(path.relative_to(code_dir)).encode() + b"\0" + data)
    return size, base64.b64encode(digest.digest()).decode()
