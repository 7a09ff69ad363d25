"""The problem and its cure: N concurrent environments, each holding a connection, N > max_connections."""

from __future__ import annotations

import pytest

from emulator.awslambda.function import FunctionConfig, LambdaFunction
from emulator.stack.embedded import StackEnvironment
from emulator.stack.proxies import ProxyComponent
from emulator.tools.activity import BackendSampler
from emulator.tools.burst import BurstResult, invoke_burst

pytestmark = pytest.mark.integration

INVOCATIONS = 40  # twice max_connections (20)
WORK = {"sleep_ms": 300}


def _burst(stack: StackEnvironment, via: ProxyComponent) -> tuple[BurstResult, int]:
    with (
        LambdaFunction(FunctionConfig(environment=stack.handler_environment(via))) as function,
        BackendSampler(stack.postgres, user=stack.config.db_user) as sampler,
    ):
        result = invoke_burst(function, INVOCATIONS, WORK)
    return result, sampler.samples.peak


def _report(capsys: pytest.CaptureFixture[str], label: str, result: BurstResult, peak: int) -> None:
    with capsys.disabled():
        print(
            f"\n  {label}: {result.succeeded}/{result.invocations} ok, {result.failed} failed, "
            f"peak backends {peak}, {result.wall_seconds:.2f} s"
        )
        for error, count in result.errors.most_common():
            print(f"    {count} x {error}")


def test_directly_some_invocations_fail_with_too_many_clients(
    pooled_stack: StackEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pooled_stack.config.max_connections < INVOCATIONS
    result, peak = _burst(pooled_stack, pooled_stack.direct)
    _report(capsys, "direct", result, peak)
    assert result.failed > 0
    assert all(error.startswith("53300 ") for error in result.errors), result.errors
    # Ordinary roles get the slots not reserved for superusers, and no more.
    assert peak <= pooled_stack.config.max_connections - pooled_stack.config.superuser_reserved_connections
    assert result.succeeded >= 1


def test_through_the_pooler_none_fail_and_backends_stay_within_the_pool(
    pooled_stack: StackEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    result, peak = _burst(pooled_stack, pooled_stack.proxy)
    _report(capsys, f"through {pooled_stack.proxy.kind} (pool {pooled_stack.config.pool_size})", result, peak)
    assert result.failed == 0, result.errors
    assert 0 < peak <= pooled_stack.config.pool_size
