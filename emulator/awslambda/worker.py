"""The inside of one Lambda execution environment: a worker process that runs the handler.

Workers are forked from a zygote (multiprocessing's forkserver) that imported this module once:
boto3, botocore and psycopg2 are loaded there, and botocore's data loader is warmed and shared, so
a worker's Init (importing the handler module, which builds its boto3 clients) costs milliseconds
instead of a fresh interpreter's second, as with Lambda's own snapshots. The handler module itself
is imported in the worker only: its module-scope state (the database connection) is per worker.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

import boto3
import botocore.loaders
import botocore.session
import psycopg2  # noqa: F401 - loaded once in the zygote, for every worker

from emulator.awslambda.context import LambdaContext

_PR_SET_PDEATHSIG = 1
_shared_loader = botocore.loaders.create_loader()


def _register_shared_loader(self: Any) -> None:
    self._components.lazy_register_component("data_loader", lambda: _shared_loader)


# Every boto3 session in a worker reads service models through the zygote's loader (read-only data).
botocore.session.Session._register_data_loader = _register_shared_loader  # type: ignore[attr-defined]
for _service in ("rds", "secretsmanager", "sts"):
    # Load the models the handler's clients need while still in the zygote.
    boto3.session.Session().client(_service, region_name="us-east-1")


@dataclass(frozen=True)
class WorkerSpec:
    handler_file: str
    handler_name: str
    environment: dict[str, str]
    function_name: str
    function_arn: str
    memory_mb: int
    timeout_seconds: float
    # Where the function's output goes (CloudWatch Logs in AWS); None keeps the parent's.
    log_path: str | None = None


def _error_payload(exc: BaseException) -> dict[str, Any]:
    """What Lambda's Python runtime returns for an unhandled exception."""
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        # The user's frames, not this runner's.
        "stackTrace": [
            line
            for frame, line in zip(
                traceback.extract_tb(exc.__traceback__), traceback.format_tb(exc.__traceback__), strict=False
            )
            if frame.filename != __file__
        ],
    }


def _die_with_parent() -> None:
    """A frozen (stopped) worker would outlive a parent killed with SIGKILL forever: have the kernel
    kill it when its parent goes (Linux's PR_SET_PDEATHSIG; elsewhere the parent's shutdown does)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _initialize(spec: WorkerSpec) -> Callable[[Any, Any], Any]:
    """The Init phase: the function's environment and logging, then the handler module's import."""
    # Ctrl+C reaches the whole process group; the parent ends environments, as Lambda's service does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    os.environ.clear()
    os.environ.update(spec.environment)
    if spec.log_path:
        log = os.open(spec.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
    # Lambda's Python runtime gives the root logger a handler with this format.
    logging.basicConfig(
        level=logging.INFO,
        format="[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        force=True,
    )
    logging.Formatter.converter = time.gmtime  # Lambda logs in UTC
    # As in Lambda: the task root is first on sys.path and the handler's module has its own name,
    # so the function's other modules import (the probe imports index) and share one instance.
    task_root = spec.environment.get("LAMBDA_TASK_ROOT") or os.path.dirname(spec.handler_file)
    if task_root not in sys.path:
        sys.path.insert(0, task_root)
    name = os.path.relpath(spec.handler_file, task_root).removesuffix(".py").replace(os.sep, ".")
    module_spec = importlib.util.spec_from_file_location(name, spec.handler_file)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"Cannot find handler file {spec.handler_file}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    handler: Callable[[Any, Any], Any] = getattr(module, spec.handler_name)
    return handler


def _init_error(exc: BaseException) -> dict[str, Any]:
    return {**_error_payload(exc), "errorType": "Runtime.ImportModuleError"}


def serve(conn: Connection, spec: WorkerSpec) -> None:
    """One environment: Init, then answer invocations until the pipe closes."""
    started = time.monotonic()
    try:
        handler = _initialize(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the caller as Lambda reports it
        conn.send(("init_error", _init_error(exc)))
        return
    conn.send(("ready", time.monotonic() - started))
    _answer(conn, handler, spec)


def serve_snapshot(control: Connection, spec: WorkerSpec) -> None:
    """The template of a function's environments, as Lambda SnapStart snapshots one after Init:
    Init runs here once, then each environment is forked from this process (copy-on-write) and
    starts with Init done. Each environment still opens its own connection on its first invocation,
    as the handler opens connections lazily; a handler that connected during Init would share that
    socket between forks, which is why SnapStart, too, asks for connections to be made after restore."""
    try:
        handler = _initialize(spec)
    except Exception as exc:  # noqa: BLE001 - every environment will report it
        control.send(("init_error", _init_error(exc)))
        return
    control.send(("ready", 0.0))
    # Environments are this process's children; let the kernel reap them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        try:
            fd = reduction.recv_handle(control)
        except (EOFError, OSError):
            return
        pid = os.fork()
        if pid == 0:
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _die_with_parent()  # the template's children: the death signal is not inherited
            conn = Connection(fd)
            conn.send(("ready", 0.0))
            _answer(conn, handler, spec)
            os._exit(0)
        os.close(fd)
        control.send(pid)


def _answer(conn: Connection, handler: Callable[[Any, Any], Any], spec: WorkerSpec) -> None:
    while True:
        try:
            request_id, event = conn.recv()
        except EOFError:
            return
        context = LambdaContext(
            function_name=spec.function_name,
            function_version="$LATEST",
            invoked_function_arn=spec.function_arn,
            memory_limit_in_mb=spec.memory_mb,
            aws_request_id=request_id,
            log_group_name=f"/aws/lambda/{spec.function_name}",
            log_stream_name=f"local-twin/{os.getpid()}",
            _deadline=time.monotonic() + spec.timeout_seconds,
        )
        try:
            result = handler(event, context)
        except Exception as exc:  # noqa: BLE001 - an unhandled error is the invocation's result
            conn.send(("error", _error_payload(exc)))
            continue
        try:
            conn.send(("ok", json.dumps(result)))
        except TypeError as exc:
            message = f"Unable to marshal response: {exc}"
            conn.send(("error", {"errorMessage": message, "errorType": "Runtime.MarshalError"}))
