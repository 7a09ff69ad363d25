"""A steady load keeps its rate and records every call until it is stopped."""

from __future__ import annotations

from pathlib import Path

from emulator.awslambda.function import FunctionConfig, LambdaFunction
from emulator.tools.steady import SteadyLoad
from emulator.wait import wait_until


def _function(tmp_path: Path, body: str) -> LambdaFunction:
    (tmp_path / "steady.py").write_text(f"def handler(event, context):\n    {body}\n")
    return LambdaFunction(FunctionConfig(handler="steady.handler", code_dir=tmp_path, init="snapshot"))


def test_each_worker_invokes_once_per_period_until_stopped(tmp_path: Path) -> None:
    with _function(tmp_path, "return event") as function:
        load = SteadyLoad(function, {"n": 1}, workers=2, period=0.05)
        load.start()
        wait_until(lambda: len(load.calls) >= 20, timeout=30, component="a steady load of 20 calls")
        load.stop()
        done = len(load.calls)
        assert all(call.ok for call in load.calls)
        # Two workers at 20 calls a second each: never more than the period allows.
        span = load.calls[-1].started - min(call.started for call in load.calls)
        assert done <= 2 * (span / 0.05 + 1) + 2
        assert len(load.calls) == done  # nothing runs after stop()
        # Calls that do not overlap share a warm environment, as Lambda reuses one.
        assert 1 <= len(function.environments()) <= 2


def test_a_failed_invocation_is_recorded_with_its_error(tmp_path: Path) -> None:
    with _function(tmp_path, "raise RuntimeError('terminating connection (SQLSTATE 57P01)')") as function:
        load = SteadyLoad(function, {}, workers=1, period=0.05)
        load.start()
        wait_until(lambda: len(load.calls) >= 2, timeout=30, component="a steady load of 2 calls")
        load.stop()
        assert load.calls[0].error == "57P01 terminating connection (SQLSTATE 57P01)"
