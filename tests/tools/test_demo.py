"""The connection-exhaustion demonstration, smaller: the problem directly, the cure through the proxy."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from emulator.stack.embedded import StackConfig
from emulator.tools.activity import ConnectionSamples
from emulator.tools.burst import BurstResult
from emulator.tools.consoles import console as output_console
from emulator.tools.demo import (
    DemoConfig,
    Way,
    _each_invocation,
    print_results,
    progress_display,
    results_table,
    run_demo,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_a_burst_exhausts_postgres_directly_and_not_through_the_proxy(tmp_path: Path) -> None:
    config = DemoConfig(
        invocations=60,
        work_ms=20,
        chart=tmp_path / "chart.png",
        handler_log=tmp_path / "handler.log",
        stack=StackConfig(max_connections=20, pool_size=5),
    )
    console = Console(record=True, width=150)
    ways = {way.name: way for way in run_demo(config, console)}
    print(console.export_text())

    direct = ways["direct"]
    # 20 slots, 3 for superusers, one taken by the sampler: far fewer than 60 environments get in.
    assert direct.burst.failed > 0
    assert all(error.startswith("53300 ") for error in direct.burst.errors)
    assert direct.samples.peak <= 17

    for name in ("RDS Proxy emulator", *(["PgBouncer"] if "PgBouncer" in ways else [])):
        way = ways[name]
        assert way.burst.failed == 0, (name, way.burst.errors)
        assert way.pool_cap == 5
        assert 1 <= way.samples.peak <= way.pool_cap, name
        # Many more client connections than database connections: the multiplexing.
        assert way.samples.peak_clients > way.pool_cap, name

    assert config.chart.read_bytes().startswith(PNG_SIGNATURE)
    # The environments' own output (their failed connections) went to the handler log, not the console.
    assert "53300" in config.handler_log.read_text()
    assert '"event": "db_error"' not in console.export_text()


def _way(name: str, ok: int, failed: int, *, cap: int | None, borrow: tuple[int, int] | None) -> Way:
    burst = BurstResult(invocations=ok + failed, succeeded=ok, wall_seconds=13.04)
    samples = ConnectionSamples(times=[0.0, 1.0], counts=[3, 17], clients=[3, 500], client_times=[0.0, 1.0])
    p50, p99 = borrow or (None, None)
    return Way(name, burst, samples, cap, p50, p99, None if borrow is None else 0)


@pytest.mark.unit
def test_the_table_fits_80_columns_with_one_row_per_way() -> None:
    ways = [
        _way("direct", 15, 485, cap=None, borrow=None),
        _way("RDS Proxy emulator", 500, 0, cap=5, borrow=(312, 1_234_567)),
        _way("PgBouncer", 500, 0, cap=5, borrow=None),
    ]
    for width in (80, 200):
        console = Console(record=True, width=width)
        console.print(results_table(ways))
        lines = console.export_text().splitlines()
        assert max(len(line) for line in lines) <= 80
        assert "…" not in "\n".join(lines)
        for way in ways:
            (row,) = [line for line in lines if line.strip().startswith(way.name)]
            assert f" {way.burst.succeeded} " in row
        assert any("0.3/1235" in line for line in lines)


@pytest.mark.unit
def test_what_the_demo_prints_to_a_file_fits_80_columns() -> None:
    """The table was 79 columns wide in a file, but its notes wrapped at 100 and the progress lines
    were 88 wide."""
    direct = _way("direct", 136, 364, cap=None, borrow=None)
    direct.burst.errors = Counter(
        {
            "53300 FATAL: remaining connection slots are reserved for roles with the SUPERUSER "
            "attribute": 300,
            "53300 FATAL: sorry, too many clients already": 64,
        }
    )
    ways = [direct, _way("RDS Proxy emulator", 500, 0, cap=5, borrow=(312, 1_234))]
    out = io.StringIO()
    console = output_console(out)
    print_results(ways, console)
    progress = progress_display(console)
    with progress:
        for way in ways:
            progress.advance(progress.add_task(way.name, total=500), 500)
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    words = " ".join(out.getvalue().split())
    assert "wall: seconds for the burst." in words
    assert "direct: 300 x 53300 FATAL: remaining connection slots are reserved for roles" in words
    assert any(line.startswith("  direct: 300 x 53300") for line in lines)
    assert sum("500/500" in line for line in lines) == 2


@pytest.mark.unit
def test_the_header_says_what_each_invocation_does_the_example_work_or_the_event_given() -> None:
    assert _each_invocation(DemoConfig(work_ms=80)) == "each 80 ms of work"
    assert _each_invocation(DemoConfig(payload={"sleep": 0.2})) == 'each with the event {"sleep":0.2}'
    long = _each_invocation(DemoConfig(payload={"rows": list(range(50))}))
    assert long.endswith("...")
    assert len(long) == len("each with the event ") + 40
