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
    pinned_pool_hint,
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


def _pinned_pool(pinned: int, failed: int) -> Way:
    """The RDS Proxy emulator's way, for a handler that pins: a pool of 5, 30 invocations."""
    way = _way("RDS Proxy emulator", 30 - failed, failed, cap=5, borrow=(12_800, 24_000))
    way.pinned = pinned
    return way


@pytest.mark.unit
def test_lambda_timeouts_print_as_one_line_with_one_request_id_to_look_up() -> None:
    """A user's pinning handler printed 25 pairs of lines, each timeout with its own timestamp and
    request id, where 25 database errors print as one."""
    way = _pinned_pool(pinned=5, failed=25)
    way.burst.errors = Counter({"Task timed out after 30.00 seconds": 25})
    way.burst.request_ids = {"Task timed out after 30.00 seconds": "181cc96e-14dc-4fb7-8d2b-cd73a3d12b8f"}
    out = io.StringIO()
    print_results([way], output_console(out))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    words = " ".join(out.getvalue().split())
    assert (
        "RDS Proxy emulator: 25 x Task timed out after 30.00 seconds "
        "(e.g. request 181cc96e-14dc-4fb7-8d2b-cd73a3d12b8f)"
    ) in words
    assert sum("Task timed out" in line for line in lines) == 1


@pytest.mark.unit
def test_a_pool_whose_every_connection_was_pinned_says_why_its_invocations_failed() -> None:
    assert pinned_pool_hint(_pinned_pool(pinned=5, failed=25)) == (
        "RDS Proxy emulator: all 5 pooled connections pinned; the rest waited to borrow"
    )


@pytest.mark.parametrize(
    "way",
    [
        _pinned_pool(pinned=4, failed=25),  # a connection was left to borrow
        _pinned_pool(pinned=5, failed=0),  # all pinned, yet every invocation got one in time
        _way("PgBouncer", 5, 25, cap=5, borrow=None),  # pinning unknown
        _way("direct", 15, 485, cap=None, borrow=None),  # no pool
    ],
    ids=["pinned-below-cap", "nothing-failed", "pinning-unknown", "no-pool"],
)
@pytest.mark.unit
def test_no_pinned_pool_hint_unless_every_pooled_connection_was_pinned_and_invocations_failed(
    way: Way,
) -> None:
    assert pinned_pool_hint(way) is None


@pytest.mark.unit
def test_the_pinned_pool_hint_is_one_line_under_the_table() -> None:
    ways = [_way("direct", 15, 15, cap=None, borrow=None), _pinned_pool(pinned=5, failed=25)]
    out = io.StringIO()
    print_results(ways, output_console(out))
    lines = out.getvalue().splitlines()
    (row,) = [i for i, line in enumerate(lines) if line.startswith(" RDS Proxy emulator ")]
    assert lines[row + 1] == "RDS Proxy emulator: all 5 pooled connections pinned; the rest waited to borrow"
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)


@pytest.mark.unit
def test_the_header_says_what_each_invocation_does_the_example_work_or_the_event_given() -> None:
    assert _each_invocation(DemoConfig(work_ms=80)) == "each 80 ms of work"
    assert _each_invocation(DemoConfig(payload={"sleep": 0.2})) == 'each with the event {"sleep":0.2}'
    long = _each_invocation(DemoConfig(payload={"rows": list(range(50))}))
    assert long.endswith("...")
    assert len(long) == len("each with the event ") + 40
