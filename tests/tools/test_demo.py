"""The connection-exhaustion demonstration, smaller: the problem directly, the cure through the proxy."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from emulator.stack.embedded import StackConfig
from emulator.tools.demo import DemoConfig, run_demo

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
