"""The inside of one Lambda execution environment: a worker process that runs the handler.

Workers are forked from a zygote (multiprocessing's forkserver) that imported this module once:
boto3, botocore, psycopg2 and psycopg 3 are loaded there, and botocore's data loader is warmed and
shared, so a worker's Init (importing the handler module, which builds its boto3 clients) costs
milliseconds instead of a fresh interpreter's second, as with Lambda's own snapshots. Those
libraries therefore come from the kit's environment even when a function's code directory holds
its own copies (a package built for the Lambda runtime's Python, whose compiled parts would not
load here). The handler module itself is imported in the worker only: its module-scope state (the
database connection) is per worker."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import logging
import os
import resource
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing import forkserver, reduction
from multiprocessing.connection import Connection
from typing import Any, cast

import boto3
import botocore.loaders
import botocore.session
import psycopg  # noqa: F401 - both drivers loaded once in the zygote, for every worker
import psycopg2  # noqa: F401

from emulator.awslambda.context import LambdaContext
from emulator.awslambda.spec import EXIT_RECORD, WorkerSpec

_PR_SET_PDEATHSIG = 1
_shared_loader = botocore.loaders.create_loader()


def _register_shared_loader(self: Any) -> None:
    self._components.lazy_register_component("data_loader", lambda: _shared_loader)


# Every boto3 session in a worker reads service models through the zygote's loader (read-only data).
botocore.session.Session._register_data_loader = _register_shared_loader  # type: ignore[attr-defined]
for _service in ("rds", "secretsmanager", "sts"):
    # Load the models the handler's clients need while still in the zygote.
    boto3.session.Session().client(_service, region_name="us-east-1")


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


def _release_the_forkserver() -> None:
    """multiprocessing hands every child of its forkserver a copy of the pipe whose end tells the
    forkserver that the kit's process is gone. An environment holding it would keep the forkserver
    alive after a SIGKILL of the kit, and the forkserver would keep the environment (its death
    signal never comes): each waits for the other forever. No environment starts processes itself."""
    server: Any = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive, int):
        with contextlib.suppress(OSError):
            os.close(alive)
        server._forkserver_alive_fd = None


def _capture_output() -> None:
    """Send this process's stdout and stderr to an in-memory file of its own.

    After each Init and invocation the parent gets what was printed (Lambda's log of that
    invocation: LogType=Tail returns its end) and writes it where the function's log goes.
    """
    fd = os.memfd_create("lambda-output") if hasattr(os, "memfd_create") else _temporary_file()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _temporary_file() -> int:
    import tempfile  # noqa: PLC0415 - only where memfd_create is missing

    fd, path = tempfile.mkstemp(prefix="lambda-output-")
    os.unlink(path)
    return fd


def _take_output() -> bytes:
    """What was printed since the last call; the file starts empty again."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    size = os.fstat(1).st_size
    data = os.pread(1, size, 0) if size else b""
    os.ftruncate(1, 0)
    os.lseek(1, 0, os.SEEK_SET)
    return data


def _max_memory_mb() -> int:
    # ru_maxrss is in KiB on Linux; a forked environment inherits its template's peak.
    return max(1, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


class InitError(Exception):
    """Init failed as Lambda's Python runtime reports it (errorType Runtime.*)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def _import_handler(spec: WorkerSpec) -> Callable[[Any, Any], Any]:
    """Import the handler as Lambda's runtime does: the task root first on sys.path, the module by
    its dotted name (so the function's other modules import it and share one instance)."""
    module_name, _, function_name = spec.handler.rpartition(".")
    if not module_name:
        raise InitError(
            "Runtime.MalformedHandlerName", f"Bad handler '{spec.handler}': not enough values to unpack"
        )
    if spec.task_root not in sys.path:
        sys.path.insert(0, spec.task_root)
    # A module of the same name the zygote loaded is the kit's, not the function's.
    loaded = sys.modules.get(module_name)
    if loaded is not None and not str(getattr(loaded, "__file__", "") or "").startswith(spec.task_root):
        del sys.modules[module_name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0] and exc.name != module_name:
            raise  # the handler's own import failed: reported with its message below
        message = f"Unable to import module '{module_name}': {exc}"
        raise InitError("Runtime.ImportModuleError", message) from exc
    handler = getattr(module, function_name, None)
    if handler is None:
        raise InitError(
            "Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module '{module_name}'"
        )
    return cast(Callable[[Any, Any], Any], handler)


def _initialize(spec: WorkerSpec) -> Callable[[Any, Any], Any]:
    """The Init phase: the function's environment and logging, then the handler module's import."""
    # Ctrl+C reaches the whole process group; the parent ends environments, as Lambda's service does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    _release_the_forkserver()
    os.environ.clear()
    os.environ.update(spec.environment)
    _capture_output()
    # Lambda's Python runtime gives the root logger a handler with this format.
    logging.basicConfig(
        level=logging.INFO,
        format="[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        force=True,
    )
    logging.Formatter.converter = time.gmtime  # Lambda logs in UTC
    return _import_handler(spec)


def _init_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, InitError):
        return {"errorMessage": str(exc), "errorType": exc.error_type, "stackTrace": []}
    return {**_error_payload(exc), "errorType": "Runtime.ImportModuleError"}


def _print_init_error(error: dict[str, Any]) -> None:
    # Lambda logs a failed Init as the runtime's JSON error line.
    print(f"[ERROR] {error['errorType']}: {error['errorMessage']}", file=sys.stderr)


def serve(conn: Connection, spec: WorkerSpec) -> None:
    """One environment: Init, then answer invocations until the pipe closes."""
    started = time.monotonic()
    try:
        handler = _initialize(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the caller as Lambda reports it
        error = _init_error(exc)
        _print_init_error(error)
        conn.send(("init_error", error, {"log": _take_output()}))
        return
    conn.send(("ready", None, {"log": _take_output(), "init_ms": (time.monotonic() - started) * 1000}))
    _answer(conn, handler, spec)


def _report_exits(statuses: Connection) -> None:
    """Reap the environments (this template's children) as they end and write each one's exit code
    to `statuses` (spec.EXIT_RECORD): what the kit says after "Runtime exited" comes from here. The
    pipe never blocks the template: should nobody read it, later reports are dropped."""
    fd = statuses.fileno()
    os.set_blocking(fd, False)

    def reap(signum: int, frame: Any) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            with contextlib.suppress(OSError):  # full (nobody reads) or closed: dropped
                os.write(fd, struct.pack(EXIT_RECORD, pid, os.waitstatus_to_exitcode(status)))

    signal.signal(signal.SIGCHLD, reap)


def serve_snapshot(control: Connection, statuses: Connection, spec: WorkerSpec) -> None:
    """The template of a function's environments, as Lambda SnapStart snapshots one after Init:
    Init runs here once, then each environment is forked from this process (copy-on-write) and
    starts with Init done. Each environment still opens its own connection on its first invocation,
    as the handler opens connections lazily; a handler that connected during Init would share that
    socket between forks, which is why SnapStart, too, asks for connections to be made after restore."""
    started = time.monotonic()
    try:
        handler = _initialize(spec)
    except Exception as exc:  # noqa: BLE001 - every environment will report it
        error = _init_error(exc)
        _print_init_error(error)
        control.send(("init_error", error, {"log": _take_output()}))
        return
    control.send(("ready", None, {"log": _take_output(), "init_ms": (time.monotonic() - started) * 1000}))
    _report_exits(statuses)
    while True:
        try:
            fd = reduction.recv_handle(control)
        except (EOFError, OSError):
            return
        pid = os.fork()
        if pid == 0:
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            statuses.close()  # the template's; its reader sees the template's end by its EOF
            _die_with_parent()  # the template's children: the death signal is not inherited
            _capture_output()  # an output file of its own, not the template's shared one
            conn = Connection(fd)
            conn.send(("ready", None, {"log": b"", "init_ms": 0.0}))
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
        started = time.monotonic()
        context = LambdaContext(
            function_name=spec.function_name,
            function_version="$LATEST",
            invoked_function_arn=spec.function_arn,
            memory_limit_in_mb=spec.memory_mb,
            aws_request_id=request_id,
            log_group_name=f"/aws/lambda/{spec.function_name}",
            log_stream_name=f"local-twin/{os.getpid()}",
            _deadline=started + spec.timeout_seconds,
        )
        try:
            result = handler(event, context)
        except Exception as exc:  # noqa: BLE001 - an unhandled error is the invocation's result
            payload = _error_payload(exc)
            # Lambda's Python runtime logs the error it returns.
            print(f"[ERROR] {payload['errorType']}: {payload['errorMessage']}", file=sys.stderr)
            answer: tuple[str, Any] = ("error", payload)
        else:
            try:
                answer = ("ok", json.dumps(result))
            except TypeError as exc:
                message = f"Unable to marshal response: {exc}"
                answer = ("error", {"errorMessage": message, "errorType": "Runtime.MarshalError"})
        meta = {
            "log": _take_output(),
            "duration_ms": (time.monotonic() - started) * 1000,
            "max_memory_mb": _max_memory_mb(),
        }
        conn.send((*answer, meta))
