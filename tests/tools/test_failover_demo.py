"""The failover demonstration, smaller: the direct path waits for the endpoint's name, the proxy
only for the promotion."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from emulator.awslambda.function import FunctionConfig
from emulator.errors import ComponentError
from emulator.stack.cluster import ClusterKind
from emulator.stack.embedded import StackConfig
from emulator.tools.failover_demo import (
    DIRECT,
    PROXIED,
    FailoverDemoConfig,
    WayLoad,
    exit_code,
    failure,
    function_for_way,
    results_table,
    run_failover_demo,
    verdict,
)
from emulator.tools.interruption import FailoverMoments, Interruption
from emulator.tools.steady import SteadyLoad

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TTL = 2.0


@pytest.mark.integration
def test_through_the_proxy_a_failover_interrupts_less_than_directly(tmp_path: Path) -> None:
    config = FailoverDemoConfig(
        workers=3,
        period=0.1,
        work_ms=10,
        before_seconds=1.0,
        after_seconds=1.0,
        chart=tmp_path / "failover.png",
        handler_log=tmp_path / "handler.log",
        stack=StackConfig(database_kind=ClusterKind.MULTI_AZ, dns_ttl_seconds=TTL),
    )
    console = Console(record=True, width=80)
    loads = run_failover_demo(config, console)
    ways = {way.name: way.outcome for way in loads}
    text = console.export_text()
    print(text)
    direct, proxied = ways[DIRECT], ways[PROXIED]
    assert direct is not None
    assert proxied is not None

    # Directly: the writer's connections drop, and new ones reach nobody until the name moves.
    assert direct.failed > 0
    assert direct.longest_gap >= TTL
    assert direct.recovered_after is not None
    assert direct.recovered_after >= TTL
    # Through the proxy: at most the invocations in flight at the fence fail (one per worker); the
    # others wait for the new writer, found without waiting for the name.
    assert proxied.failed <= config.workers, proxied.errors
    assert proxied.recovered_after is not None
    assert proxied.recovered_after < TTL
    assert proxied.longest_gap < direct.longest_gap
    assert exit_code(loads, config) == 0

    assert config.chart.read_bytes().startswith(PNG_SIGNATURE)
    table = text[text.index("A steady load through a failover") :].split("calls/ok/failed")[0]
    assert max(len(line) for line in table.splitlines()) <= 80


def _loads(direct_recovered: float | None, proxied_failed: int) -> list[WayLoad]:
    loads = []
    for name, recovered, failed in ((DIRECT, direct_recovered, 5), (PROXIED, 0.5, proxied_failed)):
        outcome = Interruption(
            calls=100,
            succeeded=100 - failed,
            errors=Counter({"57P01 terminating connection": failed}),
            longest_gap=1.0,
            gap_started=3.0,
            waited=2,
            recovered_after=recovered,
        )
        loads.append(WayLoad(name, SteadyLoad(None, {}), outcome))  # type: ignore[arg-type]
    return loads


@pytest.mark.unit
@pytest.mark.parametrize(
    ("direct_recovered", "proxied_failed", "code", "why"),
    [
        (5.0, 3, 0, None),
        (None, 0, 1, "the direct path never recovered within the run (5 x 57P01 terminating connection)"),
        (5.0, 4, 1, "through the proxy 4 invocations failed, more than the 3 that can be in flight"),
    ],
    ids=["recovered-with-in-flight-failures", "direct-never-recovered", "more-proxied-failures-than-workers"],
)
def test_the_demo_fails_when_a_way_never_recovers_or_the_proxy_fails_more_than_was_in_flight(
    direct_recovered: float | None, proxied_failed: int, code: int, why: str | None
) -> None:
    loads, config = _loads(direct_recovered, proxied_failed), FailoverDemoConfig(workers=3)
    assert exit_code(loads, config) == code
    said = failure(loads, config)
    if why is None:
        assert said is None
    else:
        assert said is not None
        assert said.startswith(why)


@pytest.mark.unit
def test_the_table_fits_80_columns() -> None:
    console = Console(record=True, width=80)
    console.print(results_table(_loads(5.0, 3)))
    assert max(len(line) for line in console.export_text().splitlines()) <= 80


@pytest.mark.unit
def test_your_function_runs_each_way_with_the_ways_environment_under_its_own() -> None:
    direct, proxy = object(), object()
    stack = SimpleNamespace(
        direct=direct,
        handler_environment=lambda via: {"DB_PROXY_ENDPOINT": "direct" if via is direct else "proxy"},
        environment=lambda: {"DB_NAME": "app"},
    )
    yours = FunctionConfig(
        name="orders", handler="orders.handler", code_dir=Path("/src"), environment={"MARK": "${DB_NAME}"}
    )
    config = FailoverDemoConfig(function=yours, handler_log=Path("handler.log"))
    functions = {
        way: function_for_way(stack, via, config) for way, via in (("direct", direct), ("proxied", proxy))
    }  # type: ignore[arg-type]
    for way, function in functions.items():
        assert function.name == f"orders-{way}"
        assert (function.handler, function.code_dir) == ("orders.handler", Path("/src"))
        assert function.environment == {
            "DB_PROXY_ENDPOINT": "direct" if way == "direct" else "proxy",
            "MARK": "app",
        }
        assert function.init == "snapshot"
    # Without yours, the example handler gets the way's environment.
    example = function_for_way(stack, proxy, FailoverDemoConfig())  # type: ignore[arg-type]
    assert example.handler == FunctionConfig().handler
    assert example.environment == {"DB_PROXY_ENDPOINT": "proxy"}


@pytest.mark.integration
def test_a_function_that_fails_before_any_failover_stops_the_demo_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(
        "def handler(event, context):\n    raise RuntimeError('relation \"orders\" does not exist')\n"
    )
    config = FailoverDemoConfig(
        workers=2,
        chart=tmp_path / "failover.png",
        handler_log=tmp_path / "handler.log",
        function=FunctionConfig(handler="broken.handler", code_dir=tmp_path),
        stack=StackConfig(database_kind=ClusterKind.MULTI_AZ),
    )
    with pytest.raises(ComponentError, match='fails before any failover: RuntimeError relation "orders"'):
        run_failover_demo(config, Console(record=True, width=80))
    assert not config.chart.exists()


@pytest.mark.unit
def test_the_verdict_says_why_when_the_direct_path_was_back_before_its_endpoint_moved() -> None:
    # Aurora: the endpoint's name still leads to the old writer, back as a reader, and reads work.
    moments = FailoverMoments(started=10.0, writer_ready=11.0, endpoint_switched=16.0)
    early = " ".join(verdict(_loads(1.0, 0), moments).split())
    assert (
        "The direct path was back after 1.0 s, before the endpoint's name reached the new writer (6.0 s)"
        in early
    )
    assert "rejoined as a reader" in early
    late = " ".join(verdict(_loads(6.2, 0), moments).split())
    assert "waits for the endpoint's name to reach the new writer (5 s after the promotion here)" in late
    assert "back after" not in late


@pytest.mark.unit
def test_the_verdict_compares_nothing_when_a_way_never_recovered() -> None:
    # A handler that writes, directly on Aurora: its connection stays on the old writer, read-only.
    moments = FailoverMoments(started=10.0, writer_ready=11.0, endpoint_switched=16.0)
    said = " ".join(verdict(_loads(None, 0), moments).split())
    assert said.startswith("No comparison: the direct path never recovered within the run (5 x 57P01")
    assert "shorter" not in said
