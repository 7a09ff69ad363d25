"""moto's server in a process of its own: `python -m emulator.stack.moto_server REGION FD`.

One per stack, so no two stacks share moto's state, and the stack's Python process does not pay for
moto's imports and first requests under its own GIL. The kit's fixes (moto_quirks) are applied here,
where moto runs. FD is the listening socket the parent made and passed on, so the port is known, and
held, before moto starts. The parent talks to the child over its stdin and stdout, one JSON object
per line (emulator.stack.moto_process): the first line the child writes says where it listens, or why
moto could not start; then each request line gets one answer line. When stdin ends (the parent
stopped it, exited or was killed) the child exits: moto never outlives its stack.

Before it says it listens, the child answers a request of the API the stack calls while it starts
(Secrets Manager), so that backend is loaded and the stack's first calls are fast.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from emulator.net import LOOPBACK
from emulator.stack.moto_quirks import TARGET_HEALTH, apply_moto_quirk_fixes

# What moto routes a request by: the service and region in the signature's credential scope. Only
# Secrets Manager is asked while the stack starts (the secret, the proxy's first read); the first
# request of any service also builds what moto's server shares between services.
_WARM_UP_REQUESTS: tuple[tuple[str, dict[str, str], str], ...] = (
    (
        "secretsmanager",
        {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.ListSecrets"},
        "{}",
    ),
)
WARM_UP_ACCESS_KEY_ID = "AKIALOCALTWINWARMUP0"


def main(argv: list[str]) -> int:
    region, listener = argv[0], int(argv[1])
    # The protocol's channel is a copy of stdout; anything moto prints goes to stderr instead.
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Ctrl+C is for the parent, which still needs moto while it tears the stack down (terraform destroy).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Terraform attaches AWS managed policies to the proxy and Lambda roles; moto only knows them
    # when asked to load them, and reads this when its IAM backend is first created.
    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    try:
        from moto.moto_server.werkzeug_app import (  # noqa: PLC0415 - a missing moto is answered, below
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server  # noqa: PLC0415
    except ImportError as exc:
        _say(channel, {"error": f"moto's server mode is not installed ({exc})", "import": True})
        return 3
    apply_moto_quirk_fixes()
    _aws_managed_policies_on_first_iam_request()
    # One log line per request would drown everything else.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = DomainDispatcherApplication(create_backend_app)
    _warm_up(app, region)
    try:
        server = make_server(
            LOOPBACK, 0, one_at_a_time(app), threaded=True, request_handler=MotoRequestHandler, fd=listener
        )
    except OSError as exc:
        _say(channel, {"error": f"cannot listen on the socket its parent passed (fd {listener}): {exc}"})
        return 3
    threading.Thread(target=server.serve_forever, name="moto", daemon=True).start()
    _say(channel, {"port": server.port})
    for line in sys.stdin:
        with _BACKENDS:
            answer = _answer(json.loads(line))
        _say(channel, answer)
    # stdin ended: the stack is gone. Nothing here needs an orderly exit.
    os._exit(0)


def _aws_managed_policies_on_first_iam_request() -> None:
    """moto loads AWS's managed policies (some 1,200, for Terraform's policy attachments) into each IAM
    backend it creates, and other services' first requests create one: 40 MB and over a second of CPU
    for a stack that never asks IAM anything. They are loaded when the IAM API is first asked
    instead, so a stack without Terraform never pays for them and every IAM answer still has them."""
    from moto.iam.models import IAMBackend  # noqa: PLC0415 - moto is there (main)
    from moto.iam.responses import IamResponse  # noqa: PLC0415

    load = IAMBackend._init_aws_policies
    IAMBackend._init_aws_policies = lambda self: []  # type: ignore[method-assign]
    lock = threading.Lock()
    loaded: set[int] = set()

    def backend(self: Any) -> Any:
        found = iam_backend(self)
        with lock:
            if id(found) not in loaded:
                loaded.add(id(found))
                found.aws_managed_policies = load(found)
                for policy in found.aws_managed_policies:
                    found.managed_policies.setdefault(policy.arn, policy)
        return found

    iam_backend = IamResponse.backend.fget  # type: ignore[attr-defined]
    IamResponse.backend = property(backend)  # type: ignore[method-assign,assignment]


def _say(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")


class _Api:
    """Requests to moto's own application, in this process, as a client sends them over HTTP (moto
    routes by the service and region of the signature's credential scope and checks no signature)."""

    def __init__(self, app: Any) -> None:
        from werkzeug.test import Client  # noqa: PLC0415 - werkzeug is moto's

        self._client = Client(app)

    def post(self, service: str, region: str, headers: dict[str, str], body: str, *, key: str) -> str:
        scope = f"{key}/20260101/{region}/{service}/aws4_request"
        authorization = f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=0"
        answer = self._client.post("/", headers={**headers, "Authorization": authorization}, data=body)
        if answer.status_code != 200:
            raise RuntimeError(f"{service} answered {answer.status_code}: {answer.get_data(as_text=True)}")
        return answer.get_data(as_text=True)


_api: _Api | None = None


def _warm_up(app: Any, region: str) -> None:
    global _api  # noqa: PLW0603 - the one application of this process
    _api = _Api(app)
    for service, headers, body in _WARM_UP_REQUESTS:
        _api.post(service, region, headers, body, key=WARM_UP_ACCESS_KEY_ID)


# -- requests from the parent -------------------------------------------------------------------


# moto's backends are not made for concurrent use: a request can change a dict another one iterates,
# and fail with a 500 that an AWS SDK resends after the first attempt half-happened (seen as a proxy
# target registered twice and a default egress rule revoked twice in Terraform applies under load).
# Requests and the parent's questions are served one at a time (re-entrant: the parent's questions
# call the application in-process).
_BACKENDS = threading.RLock()


def one_at_a_time(app: Any) -> Callable[[dict[str, Any], Any], list[bytes]]:
    """The WSGI application, serving one request at a time (its whole body made under the lock)."""

    def serve(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with _BACKENDS:
            body = app(environ, start_response)
            try:
                return list(body)
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()

    return serve


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "target_health": _follow_target_health,
        "forget_target_health": _forget_target_health,
        "function_package": _write_function_package,
        "create_secret": _create_secret,
    }
    try:
        return handlers[request["op"]](request)
    except Exception as exc:  # noqa: BLE001 - the parent raises it; the child keeps serving
        return {"error": f"{type(exc).__name__}: {exc}"}


def _create_secret(request: dict[str, Any]) -> dict[str, Any]:
    """Secrets Manager's CreateSecret, as the parent's boto3 would send it: the stack's process then
    needs no AWS SDK to start (its imports and service models cost it a third of a second and 18 MB)."""
    assert _api is not None, "warmed up before the first request"
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.CreateSecret"}
    body = json.dumps(
        {
            "Name": request["name"],
            "SecretString": request["secret_string"],
            "Description": request["description"],
            "ClientRequestToken": request["token"],
        }
    )
    created = json.loads(_api.post("secretsmanager", request["region"], headers, body, key=request["key"]))
    return {"arn": created["ARN"]}


def _follow_target_health(request: dict[str, Any]) -> dict[str, Any]:
    """describe_db_proxy_targets reports what the emulator serving the target sees of it, read from
    the emulator's /stats endpoint."""
    stats_url = str(request["stats_url"])

    def probe() -> tuple[bool, str]:
        with urllib.request.urlopen(stats_url, timeout=5) as answer:  # noqa: S310 - the proxy's loopback URL
            stats = json.loads(answer.read())
        return bool(stats["target_available"]), str(stats["target_unavailable_reason"])

    TARGET_HEALTH[str(request["target"])] = probe
    return {}


def _forget_target_health(request: dict[str, Any]) -> dict[str, Any]:
    TARGET_HEALTH.pop(str(request["target"]), None)
    return {}


def _write_function_package(request: dict[str, Any]) -> dict[str, Any]:
    """The deployment package a function was created or last updated with, written to a file. In AWS,
    get_function's Code.Location is a presigned URL of it; moto's points nowhere, so the bytes come
    from its backend, which holds what was uploaded (a file, an S3 object or a ZipFile)."""
    from moto.awslambda.models import lambda_backends  # noqa: PLC0415 - loaded when asked for

    function = lambda_backends[request["account"]][request["region"]].get_function(request["name"])
    Path(request["path"]).write_bytes(function.code_bytes)
    return {}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
