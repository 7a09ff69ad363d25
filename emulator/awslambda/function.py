"""A Lambda function run locally the way Lambda runs it: execution environments as worker processes.

- Each environment is a process that imports the handler once (Init) and serves one invocation at
  a time. Between invocations it is frozen with SIGSTOP: no code runs, its sockets stay open.
- An invocation takes a frozen environment if there is one (warm start), else a new one (cold
  start) while fewer than the concurrency limit exist; beyond that it is throttled with Lambda's
  TooManyRequestsException.
- Environments idle for `idle_reap_seconds` are shut down (the process ends, its connections
  close), as when Lambda recycles them.
- An invocation past the timeout is killed with its environment, and reported as Lambda reports it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing import reduction
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import psutil

from emulator.awslambda.logs import FunctionLog, invocation_log
from emulator.awslambda.package import KIT_RUNTIME
from emulator.awslambda.spec import EXIT_RECORD, WORKER_MODULE, Meta, WorkerSpec, serve, serve_snapshot
from emulator.errors import ComponentError
from emulator.paths import LAMBDA_DIR
from emulator.terraform.applied import AppliedFunction

# The account's default concurrency quota: the limit when the function reserves none.
ACCOUNT_CONCURRENCY = 1000
# Lambda gives the Init phase 10 s (or the function's timeout, when longer) before it gives up.
INIT_TIMEOUT = 10.0
# How long an ended environment's exit code may take to come from its snapshot template; how long
# one waiter reads the report pipe before letting another have a turn; how many reports are read
# at once and kept unasked.
EXIT_REPORT_SECONDS = 5.0
EXIT_REPORT_TURN = 0.05
EXIT_RECORDS_READ = 512
EXITS_KEPT = 4096
_EXIT_SIZE = struct.calcsize(EXIT_RECORD)

# "per_environment": every cold start runs Init (Lambda's default). "snapshot": Init runs once and
# environments are forked from it, as Lambda SnapStart restores them: much cheaper cold starts, the
# same per-environment connections for handlers that connect after Init.
InitMode = Literal["per_environment", "snapshot"]


def lambda_error(message: str, error_type: str) -> dict[str, str]:
    """An error as Lambda reports it in the response payload."""
    return {"errorMessage": message, "errorType": error_type}


_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload([WORKER_MODULE])


def start_zygote() -> None:
    """Start the environments' zygote, the process-wide forkserver, now rather than at the first
    cold start, and return at once: it imports what every environment needs (boto3, botocore's
    models, both drivers: most of a second) while the caller does other work. For a process that
    will certainly invoke, such as the demo; the stack itself leaves it to the first invoke (an
    idle twin then holds no zygote's memory)."""
    multiprocessing.forkserver.ensure_running()


def stop_zygote() -> None:
    """Stop the environments' zygote, the process-wide forkserver, and wait until it has exited (the
    next cold start starts another). Without this it outlives its process by a moment: it exits once
    it sees that process's end. For a process that must leave nothing running when it ends, such as a
    test session, once every function has stopped."""
    # The forkserver's own stop, which CPython's tests use: it closes the server's "alive" pipe and
    # waits for it. Private, hence looked up; a Python without it leaves the server to exit by itself.
    stop = getattr(getattr(multiprocessing.forkserver, "_forkserver", None), "_stop", None)
    if callable(stop):
        stop()


@dataclass(frozen=True)
class FunctionConfig:
    name: str = "local-twin-fn"
    # "module.function", the module dotted from the code directory, as Lambda's Handler setting.
    handler: str = "index.handler"
    # The function's code (what its deployment package holds): Lambda's task root, first on sys.path.
    code_dir: Path = LAMBDA_DIR
    environment: Mapping[str, str] = field(default_factory=dict)
    # What the function reports (Lambda's Runtime setting); it runs on the kit's own interpreter.
    runtime: str = KIT_RUNTIME
    timeout_seconds: float = 30
    memory_mb: int = 256
    # None: the account's unreserved concurrency (ACCOUNT_CONCURRENCY).
    reserved_concurrency: int | None = None
    # Lambda keeps idle environments for minutes, unpublished; locally it is a setting.
    idle_reap_seconds: float = 300
    init: InitMode = "per_environment"
    region: str = "us-east-1"
    account_id: str = "123456789012"
    # Where the function's log goes (its CloudWatch Logs in AWS): what Init and each invocation
    # print, between Lambda's START, END and REPORT lines. None: the caller's stdout.
    log_path: Path | None = None
    # The AWS API emulator knows this function (Terraform created it): Lambda's read calls about it
    # (get_function, ...) are answered there, with what was applied.
    in_aws_api: bool = False

    @classmethod
    def from_applied(
        cls, applied: AppliedFunction, environment: Mapping[str, str], **extra: Any
    ) -> FunctionConfig:
        """The function as applied to the AWS emulator; `environment` is what the local run uses
        (the applied variables with the proxy endpoint mapped, see AppliedStack)."""
        return cls(
            name=applied.name,
            handler=applied.handler,
            runtime=applied.runtime,
            environment=dict(environment),
            timeout_seconds=applied.timeout,
            memory_mb=applied.memory_size,
            reserved_concurrency=applied.reserved_concurrency,
            region=applied.region,
            in_aws_api=True,
            **extra,
        )

    @property
    def concurrency_limit(self) -> int:
        return ACCOUNT_CONCURRENCY if self.reserved_concurrency is None else self.reserved_concurrency

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.name}"

    def check(self) -> None:
        """Fail before any environment starts when the code directory or handler cannot be right."""
        if not self.runtime.startswith("python"):
            raise ComponentError(
                f"Lambda function {self.name}",
                f"its runtime is {self.runtime}: the twin runs Python handlers only",
                "leave this function out of the local stack (a count on a variable you pass with "
                "--tf-var), or give it a Python runtime",
            )
        module, _, function = self.handler.rpartition(".")
        if not module or not function:
            raise ComponentError(
                f"Lambda function {self.name}",
                f"handler {self.handler!r} is not module.function",
                "name it as Lambda's Handler setting, e.g. index.handler or app.main.handler "
                "(--handler; twin_handler under pytest)",
            )
        if not self.code_dir.is_dir():
            raise ComponentError(
                f"Lambda function {self.name}",
                f"its code directory {self.code_dir} does not exist",
                "pass the directory that holds the handler's module (--code DIR; twin_code under pytest)",
            )
        path = self.code_dir.joinpath(*module.split("."))
        if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()):
            raise ComponentError(
                f"Lambda function {self.name}",
                f"no module {module!r} in {self.code_dir} (looked for {path.with_suffix('.py')})",
                "the code directory (--code or twin_code, or the package a Terraform apply uploaded) must "
                "hold the handler's module; --handler or twin_handler (or the function's Handler) names "
                "module.function",
            )

    def runtime_warning(self) -> str | None:
        """What to tell the user when the function declares another Python than the kit's own."""
        if self.runtime == KIT_RUNTIME:
            return None
        return (
            f"warning: Lambda function {self.name} declares {self.runtime}; the twin runs it on Python "
            f"{KIT_RUNTIME.removeprefix('python')}, the kit's own interpreter (install the kit into a "
            f"virtual environment of {self.runtime.replace('python', 'Python ')} to match)"
        )

    def worker_spec(self) -> WorkerSpec:
        return WorkerSpec(
            task_root=str(self.code_dir.resolve()),
            handler=self.handler,
            # What Lambda sets in every environment, then the function's own variables.
            environment={
                "AWS_LAMBDA_FUNCTION_NAME": self.name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{self.runtime}",
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
                "LAMBDA_TASK_ROOT": str(self.code_dir.resolve()),
                "TZ": ":UTC",
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                **self.environment,
            },
            function_name=self.name,
            function_arn=self.arn,
            memory_mb=self.memory_mb,
            timeout_seconds=self.timeout_seconds,
        )


class Throttled(Exception):
    """Lambda's TooManyRequestsException: every environment the limit allows is busy."""

    def __init__(self, reserved: bool) -> None:
        self.reason = (
            "ReservedFunctionConcurrentInvocationLimitExceeded"
            if reserved
            else "ConcurrentInvocationLimitExceeded"
        )
        super().__init__("Rate Exceeded.")


@dataclass(frozen=True)
class Invocation:
    """One invocation's outcome, as the Invoke API reports it."""

    request_id: str
    payload: bytes
    # None on success; "Unhandled" when the handler raised, timed out or failed to initialise.
    function_error: str | None
    cold_start: bool
    environment_id: int
    # The invocation's log as Lambda writes it (Init's output on a cold start, START, what the
    # handler printed, END, REPORT): LogType=Tail returns its last 4 KB.
    log: bytes = b""

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def succeeded(self) -> bool:
        """Lambda's notion of success: no function error, whatever the payload says."""
        return self.function_error is None


@dataclass
class _Launched:
    pid: int
    conn: Connection
    kill: Callable[[], None]
    alive: Callable[[], bool]
    # The process's exit status once it has exited; None where it is not known.
    exit_status: Callable[[], int | None]


def _exited(status: int | None) -> str:
    """What Lambda says after "Runtime exited": "with error: exit status 3", "with error: signal:
    killed", or nothing when the status is not known."""
    if status is None:
        return ""
    if status < 0:
        return f" with error: signal: {(signal.strsignal(-status) or str(-status)).lower()}"
    return f" with error: exit status {status}"


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


class _FreshProcesses:
    """Every environment a new worker that runs Init itself (Lambda's on-demand cold start)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        # Each worker runs Init itself and reports its own failure, output and duration.
        self.init_error: dict[str, Any] | None = None
        self.init_log = b""
        self.init_ms = 0.0

    def launch(self, number: int) -> _Launched:
        conn, child = _context.Pipe()
        process = _context.Process(
            target=serve, args=(child, self.spec), name=f"lambda-env-{number}", daemon=True
        )
        process.start()
        child.close()
        assert process.pid is not None

        def kill() -> None:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)

        def exit_status() -> int | None:
            # The pipe closed as the process exited: its status follows at once.
            process.join(timeout=5)
            return process.exitcode

        return _Launched(process.pid, conn, kill, process.is_alive, exit_status)

    def close(self) -> None:
        return


class _Snapshot:
    """Environments forked from a template that ran Init once (Lambda SnapStart's model)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self._control, child = _context.Pipe()
        # The template reaps its environments and reports each one's exit code here (a plain pipe:
        # its small writes are never torn).
        self._statuses, statuses = _context.Pipe(duplex=False)
        self._template = _context.Process(
            target=serve_snapshot, args=(child, statuses, spec), name="lambda-snapshot"
        )
        self._template.start()
        child.close()
        statuses.close()
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()
        # Exit codes reported and not yet asked for, the newest last (bounded: those of the
        # environments the kit killed itself are never asked for).
        self._exited: dict[int, int] = {}
        self.init_error: dict[str, Any] | None = None
        # The one Init's output and duration, reported with every environment's first invocation.
        self.init_log = b""
        self.init_ms = 0.0
        limit = max(INIT_TIMEOUT, spec.timeout_seconds)
        if not self._control.poll(limit):
            self.init_error = lambda_error(f"Init timed out after {limit:.2f} seconds", "Runtime.InitTimeout")
            return
        try:
            kind, value, meta = self._control.recv()
        except (EOFError, OSError):
            # The template exited during Init (sys.exit, os._exit, a signal): no snapshot.
            self._template.join(timeout=5)
            message = f"Runtime exited during Init{_exited(self._template.exitcode)}"
            self.init_error = lambda_error(message, "Runtime.ExitError")
            return
        self.init_log = meta["log"]
        self.init_ms = float(meta.get("init_ms", 0.0))
        if kind == "init_error":
            self.init_error = value

    def launch(self, number: int) -> _Launched:
        conn, child = _context.Pipe()
        with self._lock:
            assert self._template.pid is not None
            reduction.send_handle(self._control, child.fileno(), self._template.pid)
            pid: int = self._control.recv()
        child.close()
        # Take the reports waiting, so the template never finds the pipe full (unless a caller of
        # _exit_status is reading it already: a cold start never waits for that).
        if self._status_lock.acquire(blocking=False):
            try:
                self._read_statuses(0)
            finally:
                self._status_lock.release()

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        return _Launched(pid, conn, kill, lambda: _pid_alive(pid), lambda: self._exit_status(pid))

    def _exit_status(self, pid: int) -> int | None:
        """The exit code of an environment that has just ended (its pipe closed), as the template
        reports it once it has reaped it; None when no report comes within a few seconds."""
        deadline = time.monotonic() + EXIT_REPORT_SECONDS
        while True:
            # Short turns at the pipe: a thread waiting for another environment's report never
            # waits behind this one's whole deadline (whoever reads a report files it for all).
            with self._status_lock:
                if pid in self._exited:
                    return self._exited.pop(pid)
                left = deadline - time.monotonic()
                open_ = self._read_statuses(max(0.0, min(left, EXIT_REPORT_TURN)))
                if pid in self._exited:
                    return self._exited.pop(pid)
                if left <= 0 or not open_:
                    return None

    def _read_statuses(self, timeout: float) -> bool:
        """Take the reports waiting in the pipe, waiting up to `timeout` for one; False once the
        pipe is closed (the template is gone, or the function is shutting down)."""
        try:
            if not self._statuses.poll(timeout):
                return True
            data = os.read(self._statuses.fileno(), EXIT_RECORDS_READ * _EXIT_SIZE)
        except OSError:  # closed: the function is shutting down
            return False
        # Whole records only: each was written at once, and reads take a multiple of their size.
        for pid, code in struct.iter_unpack(EXIT_RECORD, data):
            self._exited[pid] = code
        while len(self._exited) > EXITS_KEPT:
            del self._exited[next(iter(self._exited))]
        return bool(data)

    def close(self) -> None:
        self._statuses.close()
        self._control.close()
        if self._template.is_alive():
            self._template.kill()
        self._template.join(timeout=10)


@dataclass(frozen=True)
class Outcome:
    """What an environment answered: ("ok", JSON text) | ("error", payload) | ("timeout", payload),
    with what it printed and cost."""

    kind: str
    value: Any
    output: bytes = b""
    duration_ms: float = 0.0
    max_memory_mb: int = 0


class Environment:
    """One execution environment: a worker process, frozen between invocations."""

    def __init__(self, number: int, timeout: float, launcher: _FreshProcesses | _Snapshot) -> None:
        self.number = number
        self.timeout = timeout
        self.last_used = time.monotonic()
        # A snapshot whose Init failed fails every environment, as each would have.
        self.init_error = launcher.init_error
        # Init's output and duration, logged with the environment's first invocation.
        self.init_log: tuple[bytes, float] | None = (launcher.init_log, launcher.init_ms)
        self.invocations = 0
        self._launched: _Launched | None = None
        self._shut_down = False
        if self.init_error is not None:
            return
        self._launched = launcher.launch(number)
        limit = max(INIT_TIMEOUT, timeout)
        meta: Meta = {}
        try:
            kind, value, meta = self._receive(timeout=limit)  # Init (or its snapshot's resume)
        except TimeoutError:
            kind, value = (
                "init_error",
                lambda_error(f"Init timed out after {limit:.2f} seconds", "Runtime.InitTimeout"),
            )
        except (EOFError, OSError):
            status = self._launched.exit_status()
            kind, value = (
                "init_error",
                lambda_error(f"Runtime exited during Init{_exited(status)}", "Runtime.ExitError"),
            )
        if meta.get("log") or meta.get("init_ms"):
            self.init_log = (meta.get("log", b""), float(meta.get("init_ms", 0.0)))
        if kind == "init_error":
            # The environment is discarded, as Lambda does after a failed Init.
            self.init_error = value
            self.shutdown()
            return
        self._freeze()

    @property
    def pid(self) -> int:
        assert self._launched is not None
        return self._launched.pid

    def _receive(self, timeout: float) -> tuple[str, Any, Meta]:
        assert self._launched is not None
        if not self._launched.conn.poll(timeout):
            raise TimeoutError
        answer: tuple[str, Any, Meta] = self._launched.conn.recv()
        return answer

    def _freeze(self) -> None:
        if self.alive:
            os.kill(self.pid, signal.SIGSTOP)

    def _thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def invoke(self, request_id: str, event: Any) -> Outcome:
        """The handler's answer; the environment is dead after a timeout."""
        assert self._launched is not None
        self._thaw()
        self.invocations += 1
        started = time.monotonic()
        try:
            self._launched.conn.send((request_id, event))
            kind, value, meta = self._receive(self.timeout)
        except TimeoutError:
            self.shutdown()
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            message = f"{stamp} {request_id} Task timed out after {self.timeout:.2f} seconds"
            return Outcome("timeout", {"errorMessage": message}, duration_ms=self.timeout * 1000)
        except (EOFError, OSError):
            status = self._launched.exit_status()
            self.shutdown()
            message = f"RequestId: {request_id} Error: Runtime exited{_exited(status)}"
            error = lambda_error(message, "Runtime.ExitError")
            return Outcome("error", error, duration_ms=(time.monotonic() - started) * 1000)
        finally:
            self.last_used = time.monotonic()
        self._freeze()
        return Outcome(kind, value, meta["log"], meta["duration_ms"], meta["max_memory_mb"])

    @property
    def alive(self) -> bool:
        # A killed process may linger a moment; once shut down, the environment is gone.
        return self._launched is not None and not self._shut_down and self._launched.alive()

    def shutdown(self) -> None:
        """End the process: the OS closes its sockets, as when Lambda recycles an environment."""
        if self._launched is not None and not self._shut_down:
            self._shut_down = True
            self._launched.kill()
            self._launched.conn.close()


class LambdaFunction:
    """Invoke with `invoke(event)`; use as a context manager so every environment ends with it."""

    def __init__(self, config: FunctionConfig) -> None:
        config.check()
        warning = config.runtime_warning()
        if warning is not None:
            print(warning, file=sys.stderr)
        self.config = config
        spec = config.worker_spec()
        self.log = FunctionLog(config.log_path)
        self._launcher: _FreshProcesses | _Snapshot = (
            _Snapshot(spec) if config.init == "snapshot" else _FreshProcesses(spec)
        )
        self._lock = threading.Lock()
        self._idle: list[Environment] = []  # frozen, most recently used last
        self._busy: set[Environment] = set()
        self._starting = 0
        self._numbers = iter(range(1, 1 << 62))
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name=f"reaper-{config.name}", daemon=True)
        self._reaper.start()
        self.invocations = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    def environments(self) -> list[Environment]:
        with self._lock:
            return [*self._idle, *self._busy]

    def invoke(self, event: Any) -> Invocation:
        request_id = str(uuid.uuid4())
        environment, cold = self._acquire()
        try:
            if environment.init_error is not None:
                outcome = Outcome("error", environment.init_error)
            else:
                outcome = environment.invoke(request_id, event)
        finally:
            self._release(environment)
            with self._lock:
                self.invocations += 1
        init = environment.init_log if cold else None
        log = invocation_log(
            request_id,
            outcome.output,
            duration_ms=outcome.duration_ms,
            memory_mb=self.config.memory_mb,
            max_memory_mb=outcome.max_memory_mb,
            init=init,
            timed_out=outcome.value["errorMessage"] if outcome.kind == "timeout" else None,
        )
        self.log.write(log)
        if outcome.kind == "ok":
            return Invocation(request_id, str(outcome.value).encode(), None, cold, environment.number, log)
        payload = json.dumps(outcome.value).encode()
        return Invocation(request_id, payload, "Unhandled", cold, environment.number, log)

    def _acquire(self) -> tuple[Environment, bool]:
        with self._lock:
            if self._idle:
                environment = self._idle.pop()
                self._busy.add(environment)
                return environment, False
            if len(self._busy) + self._starting >= self.config.concurrency_limit:
                raise Throttled(self.config.reserved_concurrency is not None)
            self._starting += 1
            number = next(self._numbers)
        try:
            environment = Environment(number, self.config.timeout_seconds, self._launcher)  # outside the lock
        finally:
            with self._lock:
                self._starting -= 1
        with self._lock:
            self._busy.add(environment)
        return environment, True

    def _release(self, environment: Environment) -> None:
        with self._lock:
            self._busy.discard(environment)
            if environment.alive and environment.init_error is None and not self._stop.is_set():
                self._idle.append(environment)
                return
        environment.shutdown()

    def _reap(self) -> None:
        while not self._stop.wait(min(1.0, self.config.idle_reap_seconds / 4)):
            self.reap_idle()

    def reap_idle(self) -> int:
        """Shut down environments idle longer than idle_reap_seconds; how many were."""
        deadline = time.monotonic() - self.config.idle_reap_seconds
        with self._lock:
            old = [env for env in self._idle if env.last_used <= deadline]
            self._idle = [env for env in self._idle if env not in old]
        for environment in old:
            environment.shutdown()
        return len(old)

    def recycle(self) -> int:
        """End every idle environment now, as Lambda does when it recycles them (their connections
        close; the next invocation cold-starts); how many ended."""
        with self._lock:
            idle, self._idle = self._idle, []
        for environment in idle:
            environment.shutdown()
        return len(idle)

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            environments = [*self._idle, *self._busy]
            self._idle.clear()
        for environment in environments:
            environment.shutdown()
        self._launcher.close()
