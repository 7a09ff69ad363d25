"""The pinning report reads RDS Proxy-format logs and the emulator's counters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from emulator.tools.report import RunReport, read_log, read_stats

pytestmark = pytest.mark.unit

PIN = (
    "2026-11-25T05:00:00.000Z [WARN] [proxyEndpoint=default] [clientConnection={n}] The client session was pinned "
    "to the database connection [dbConnection=3] for the remainder of the session. The proxy can't reuse this "
    "connection until the session ends. Reason: SQL changed session settings that the proxy doesn't track. Consider "
    'moving session configuration to the proxy\'s initialization query. Digest: "{digest}".'
)
LOG = "\n".join(
    [
        "2026-11-25T05:00:00.000Z [INFO] [default] [clientConnection=1] A new client connected from 127.0.0.1:1.",
        "2026-11-25T05:00:00.000Z [INFO] [default] [clientConnection=2] A new client connected from 127.0.0.1:2.",
        "2026-11-25T05:00:00.000Z [INFO] [default] [clientConnection=3] The client connection was refused. Reason: x",
        PIN.format(n=1, digest="set search_path = $1"),
        PIN.format(n=2, digest="set search_path = $1"),
        PIN.format(n=4, digest="select pg_advisory_lock($1);"),
        "2026-11-25T05:00:00.000Z [WARN] [proxyEndpoint=default] [clientConnection=5] The client session was pinned "
        "to the database connection [dbConnection=4] for the remainder of the session. The proxy can't reuse this "
        "connection until the session ends. Reason: The connection ran a SQL query which exceeded the 16384 byte limit.",
    ]
)


def test_pins_are_counted_by_reason_and_digest(tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    log.write_text(LOG)
    report = read_log(log)
    settings = (
        "SQL changed session settings that the proxy doesn't track. Consider moving session configuration to the "
        "proxy's initialization query."
    )
    assert report.pins == {
        (settings, "set search_path = $1"): 2,
        (settings, "select pg_advisory_lock($1);"): 1,
        ("The connection ran a SQL query which exceeded the 16384 byte limit.", ""): 1,
    }
    assert (report.clients_connected, report.clients_refused) == (2, 1)


def test_counters_fill_the_summary(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    stats.write_text(
        json.dumps(
            {
                "peak_client_connections": 40,
                "peak_database_connections": 5,
                "max_database_connections_allowed": 5,
                "borrow_timeouts": 0,
                "borrow_latency_us": {"count": 80, "p50": 1500, "p99": 9000, "max": 12000},
            }
        )
    )
    report = RunReport(stats=read_stats(str(stats)))
    console = Console(width=200, record=True)
    for table in report.tables():
        console.print(table)
    text = console.export_text()
    assert "peak client connections" in text
    assert "1.5 ms / 9.0 ms / 12.0 ms" in text
