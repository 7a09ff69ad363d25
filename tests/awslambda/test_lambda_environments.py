"""Execution environments as Lambda runs them: worker processes, frozen between invocations,
scaled out up to the concurrency limit, reaped when idle, killed on timeout; and boto3's Invoke."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import typing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from emulator.awslambda.function import FunctionConfig, InitMode, Invocation, LambdaFunction, Throttled
from emulator.awslambda.invoke_api import InvokeApi
from emulator.stack.embedded import EmbeddedStack
from emulator.wait import wait_until

from .clients import lambda_client

pytestmark = pytest.mark.integration


@pytest.fixture(params=typing.get_args(InitMode))
def init(request: pytest.FixtureRequest) -> str:
    """Every behaviour holds whether each environment runs Init or is forked from a snapshot."""
    return str(request.param)


def _function(stack: EmbeddedStack, init: str, **settings: Any) -> LambdaFunction:
    """lambda/index.py going straight to PostgreSQL (the baseline: every environment, a backend)."""
    environment = stack.handler_environment(stack.direct)
    return LambdaFunction(FunctionConfig(environment=environment, init=init, **settings))  # type: ignore[arg-type]


def _backends(stack: EmbeddedStack) -> set[int]:
    with stack.postgres.admin_connection() as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s", (stack.config.db_user,))
        return {int(row[0]) for row in rows.fetchall()}


def _process_state(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) STATE ..."; T is stopped (SIGSTOP), i.e. frozen.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _concurrently(
    function: LambdaFunction, count: int, event: dict[str, Any]
) -> list[Invocation | Throttled]:
    barrier = threading.Barrier(count)

    def one(_: int) -> Invocation | Throttled:
        barrier.wait(timeout=30)
        try:
            return function.invoke(event)
        except Throttled as exc:
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


@pytest.fixture
def function(embedded_stack: EmbeddedStack, init: str) -> Iterator[LambdaFunction]:
    with _function(embedded_stack, init) as running:
        yield running


def test_a_warm_environment_reuses_its_connection(function: LambdaFunction) -> None:
    first, second = function.invoke({}), function.invoke({})
    assert (first.cold_start, second.cold_start) == (True, False)
    assert first.environment_id == second.environment_id
    assert first.function_error is None, first.json()
    assert second.json()["connection_reused"] is True
    assert second.json()["result"]["backend_pid"] == first.json()["result"]["backend_pid"]


def test_frozen_environments_keep_their_connections(
    embedded_stack: EmbeddedStack, function: LambdaFunction
) -> None:
    results = _concurrently(function, 3, {"sleep_ms": 300})
    assert all(isinstance(r, Invocation) and r.cold_start for r in results)
    pids = {r.json()["result"]["backend_pid"] for r in results if isinstance(r, Invocation)}
    assert len(pids) == 3
    environments = function.environments()
    assert len(environments) == 3
    # Between invocations every environment is stopped (SIGSTOP lands asynchronously), and its
    # backend is still there.
    wait_until(
        lambda: {_process_state(env.pid) for env in environments} == {"T"},
        component="frozen environments",
        timeout=10,
    )
    assert pids <= _backends(embedded_stack)


def test_scale_out_stops_at_the_concurrency_limit(embedded_stack: EmbeddedStack, init: str) -> None:
    with _function(embedded_stack, init, reserved_concurrency=2) as limited:
        results = _concurrently(limited, 5, {"sleep_ms": 500})
    throttled = [r for r in results if isinstance(r, Throttled)]
    served = [r for r in results if isinstance(r, Invocation)]
    assert len(served) == 2
    assert all(r.function_error is None for r in served)
    assert len(throttled) == 3
    assert {(str(t), t.reason) for t in throttled} == {
        ("Rate Exceeded.", "ReservedFunctionConcurrentInvocationLimitExceeded")
    }


def test_reaping_idle_environments_closes_their_connections(embedded_stack: EmbeddedStack, init: str) -> None:
    with _function(embedded_stack, init, idle_reap_seconds=0.5) as reaped:
        backend = reaped.invoke({}).json()["result"]["backend_pid"]
        wait_until(lambda: not reaped.environments(), component="idle environment reaped", timeout=15)
        wait_until(lambda: backend not in _backends(embedded_stack), component="its backend gone", timeout=15)
        # The next invocation is a cold start with a new connection.
        again = reaped.invoke({})
        assert again.cold_start
        assert again.json()["result"]["backend_pid"] != backend


def test_a_timed_out_invocation_is_reported_as_lambda_reports_it(
    embedded_stack: EmbeddedStack, init: str
) -> None:
    with _function(embedded_stack, init, timeout_seconds=1) as slow:
        backend = slow.invoke({}).json()["result"]["backend_pid"]
        timed_out = slow.invoke({"sleep_ms": 5000})
        assert timed_out.function_error == "Unhandled"
        message = timed_out.json()["errorMessage"]
        stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
        assert re.fullmatch(rf"{stamp} {timed_out.request_id} Task timed out after 1\.00 seconds", message), (
            message
        )
        # Lambda resets the environment: the process and its connection are gone.
        assert not slow.environments()
        wait_until(lambda: backend not in _backends(embedded_stack), component="its backend gone", timeout=15)


def test_boto3_invokes_the_function_through_the_kit_endpoint(
    embedded_stack: EmbeddedStack, function: LambdaFunction
) -> None:
    api = InvokeApi({function.config.name: function})
    api.start()
    try:
        client = lambda_client(api.endpoint_url)
        answer = client.invoke(FunctionName=function.config.name, Payload=json.dumps({"sleep_ms": 1}))
        assert answer["StatusCode"] == 200
        assert "FunctionError" not in answer
        body = json.loads(answer["Payload"].read())
        assert body["ok"] is True
        assert body["result"]["user"] == embedded_stack.config.db_user

        queued = client.invoke(FunctionName=function.config.arn, InvocationType="Event", Payload=b"{}")
        assert queued["StatusCode"] == 202
        wait_until(lambda: function.invocations == 2, component="the Event invocation", timeout=15)

        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.invoke(FunctionName="no-such-function", Payload=b"{}")
    finally:
        api.stop()


def _invoke_once(code_dir: Path, handler: str, init: str) -> Invocation:
    """One invocation of a fresh function whose code is in code_dir."""
    config = FunctionConfig(handler=handler, code_dir=code_dir, init=init)  # type: ignore[arg-type]
    with LambdaFunction(config) as function:
        return function.invoke({})


def test_an_init_error_is_reported_as_lambda_reports_it(tmp_path: Path, init: str) -> None:
    (tmp_path / "broken.py").write_text(
        "raise RuntimeError('no config')\n\ndef handler(event, context):\n    return 1\n"
    )
    answer = _invoke_once(tmp_path, "broken.handler", init)
    assert answer.function_error == "Unhandled"
    assert answer.json()["errorType"] == "Runtime.ImportModuleError"
    assert answer.json()["errorMessage"] == "no config"


def test_a_runtime_that_exits_during_init_is_reported_with_its_exit_status(tmp_path: Path, init: str) -> None:
    """A module that exits as it is imported (a script's sys.exit without a __main__ guard) was
    "Runtime exited during Init ()" on its own, and an EOFError out of the function with a snapshot."""
    (tmp_path / "script.py").write_text(
        "import sys\nsys.exit(3)\n\ndef handler(event, context):\n    return 1\n"
    )
    answer = _invoke_once(tmp_path, "script.handler", init)
    assert answer.function_error == "Unhandled"
    assert answer.json() == {
        "errorMessage": "Runtime exited during Init with error: exit status 3",
        "errorType": "Runtime.ExitError",
    }


def test_a_runtime_that_exits_during_an_invocation_is_reported_as_lambda_reports_it(
    tmp_path: Path, init: str
) -> None:
    (tmp_path / "quits.py").write_text("import os\n\ndef handler(event, context):\n    os._exit(4)\n")
    config = FunctionConfig(handler="quits.handler", code_dir=tmp_path, init=init)  # type: ignore[arg-type]
    with LambdaFunction(config) as quits:
        answer = quits.invoke({})
    assert answer.json()["errorType"] == "Runtime.ExitError"
    message = answer.json()["errorMessage"]
    # A snapshot's environments are its template's children: the template reports their statuses.
    assert message.startswith("RequestId: "), message
    assert message.endswith("Error: Runtime exited with error: exit status 4"), message


def test_a_runtime_killed_by_a_signal_is_reported_with_the_signal(tmp_path: Path, init: str) -> None:
    (tmp_path / "killed.py").write_text(
        "import os, signal\n\ndef handler(event, context):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    config = FunctionConfig(handler="killed.handler", code_dir=tmp_path, init=init)  # type: ignore[arg-type]
    with LambdaFunction(config) as killed:
        answers = [killed.invoke({}) for _ in range(3)]
        assert not killed.environments()
    for answer in answers:
        assert answer.json()["errorType"] == "Runtime.ExitError"
        assert answer.json()["errorMessage"].endswith("Error: Runtime exited with error: signal: killed")
        assert answer.cold_start


def test_an_init_that_outlasts_its_limit_is_an_error_and_leaves_no_process(
    tmp_path: Path, init: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("emulator.awslambda.function.INIT_TIMEOUT", 0.5)
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(30)\n\ndef handler(e, c):\n    return 1\n")
    config = FunctionConfig(handler="slow.handler", code_dir=tmp_path, timeout_seconds=0.5, init=init)  # type: ignore[arg-type]
    with LambdaFunction(config) as slow:
        answer = slow.invoke({})
        assert answer.function_error == "Unhandled"
        assert answer.json() == {
            "errorMessage": "Init timed out after 0.50 seconds",
            "errorType": "Runtime.InitTimeout",
        }
        assert not slow.environments()


_KIT_PROCESS = """
import sys
from pathlib import Path
from emulator.awslambda.function import FunctionConfig, LambdaFunction

if __name__ == "__main__":
    code, init = Path(sys.argv[1]), sys.argv[2]
    function = LambdaFunction(FunctionConfig(code_dir=code, init=init))
    assert function.invoke({}).json() == 1
    print("invoked", flush=True)
    sys.stdin.read()  # until the test kills this process
"""


def test_a_kit_process_killed_with_sigkill_leaves_no_environment_or_forkserver(
    tmp_path: Path, init: str
) -> None:
    (tmp_path / "index.py").write_text("def handler(event, context):\n    return 1\n")
    script = tmp_path / "kit.py"
    script.write_text(_KIT_PROCESS)
    kit = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), init],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert kit.stdout is not None
        assert "invoked\n" in iter(kit.stdout.readline, "")  # after the function's log lines
        # The forkserver, the snapshot's template if any, the frozen environment.
        left = psutil.Process(kit.pid).children(recursive=True)
        assert left
    finally:
        kit.kill()
        kit.wait(10)
        kit.communicate()

    def all_gone() -> bool:
        return not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    wait_until(all_gone, component="the killed kit's Lambda processes", timeout=20)


_STARTS_ZYGOTE = """
import sys
from pathlib import Path

import psutil

from emulator.awslambda.function import FunctionConfig, LambdaFunction, start_zygote
from emulator.wait import wait_until


def zygotes():
    # Until its exec, a child spawned a moment ago still shows this script's command line.
    return [p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())]


if __name__ == "__main__":
    start_zygote()
    # Running before any function exists (beside multiprocessing's resource tracker).
    wait_until(lambda: bool(zygotes()), component="the zygote", timeout=30)
    (zygote,) = zygotes()
    print("zygote", zygote.pid, " ".join(zygote.cmdline()), flush=True)
    with LambdaFunction(FunctionConfig(code_dir=Path(sys.argv[1]), init=sys.argv[2])) as function:
        function.invoke({})
        (environment,) = function.environments()
        ancestors = [p.pid for p in psutil.Process(environment.pid).parents()]
        print("environment's ancestors", *ancestors, flush=True)
"""


def test_the_zygote_started_ahead_is_the_one_environments_are_forked_from(tmp_path: Path, init: str) -> None:
    """The demo starts the zygote before its stack, so its imports overlap the stack's start: the
    first cold start must then use that zygote, not start another."""
    (tmp_path / "index.py").write_text("def handler(event, context):\n    return 1\n")
    script = tmp_path / "kit.py"
    script.write_text(_STARTS_ZYGOTE)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path), init],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.startswith(("zygote", "env")))
    zygote_pid, command = lines["zygote"].split(" ", 1)
    assert "multiprocessing.forkserver" in command
    assert "emulator.awslambda.worker" in command  # its preload
    assert zygote_pid in lines["environment's"].split()


def test_the_exit_codes_nobody_asks_for_are_not_kept_without_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot's template reports every environment's end, also those the kit killed itself
    (recycled, reaped, shut down), whose codes nobody asks for: they are read at each cold start
    and only the newest EXITS_KEPT kept, so the template never finds its pipe full."""
    monkeypatch.setattr("emulator.awslambda.function.EXITS_KEPT", 3)
    (tmp_path / "index.py").write_text("def handler(event, context):\n    return 1\n")
    with LambdaFunction(FunctionConfig(code_dir=tmp_path, init="snapshot")) as function:
        for _ in range(6):
            assert function.invoke({}).succeeded
            assert function.recycle() == 1  # killed by the kit: an exit nobody asks about

        def all_reported() -> bool:
            function.invoke({})  # a cold start reads the reports waiting
            function.recycle()
            launcher: Any = function._launcher
            return len(launcher._exited) == 3 and all(code == -9 for code in launcher._exited.values())

        wait_until(all_reported, component="the template's exit reports", timeout=20)
