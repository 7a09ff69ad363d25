"""The pinning report reads RDS Proxy-format logs and the emulator's counters, and prints tables for
people or JSON for scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from emulator.stack.envfile import PROXY_LOG_ENV, PROXY_STATS_ENV
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
        PIN.format(n=4, digest="select pg_advisory_lock($1)"),
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
        (settings, "select pg_advisory_lock($1)"): 1,
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
    for part in report.parts():
        console.print(part)
    text = console.export_text()
    assert "peak client connections" in text
    assert "1.5 ms / 9.0 ms / 12.0 ms" in text


def _printed(report: RunReport) -> str:
    console = Console(width=200, record=True)
    for part in report.parts():
        console.print(part)
    return console.export_text()


def test_a_run_without_pins_says_so_in_a_line_instead_of_an_empty_table(tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    log.write_text("\n".join(LOG.splitlines()[:3]))
    text = _printed(read_log(log))
    assert text.startswith(
        "No session was pinned: RDS Proxy could multiplex all 2 client connection(s) over its "
        "database connections.\n"
    )
    assert "Pinned sessions by reason and digest" not in text
    assert "Connections and borrowing" in text


def test_a_log_without_client_connections_asks_whether_it_is_the_proxys_log(tmp_path: Path) -> None:
    log = tmp_path / "postgres.log"
    log.write_text("LOG:  database system is ready to accept connections\n")
    assert read_log(log).nothing_pinned() == (
        "No session was pinned, and the log shows no client connection: is it the proxy's log "
        "(LOCAL_TWIN_PROXY_LOG in the env file of `up`)?"
    )


def test_json_holds_the_pins_most_frequent_first_and_the_counters_by_their_stats_names(
    tmp_path: Path,
) -> None:
    log = tmp_path / "proxy.log"
    log.write_text(LOG)
    stats = {"peak_client_connections": 40, "borrow_latency_us": {"count": 2, "p50": 10}, "other": 1}
    document = read_log(log, RunReport(stats=stats)).to_json()
    assert [(pin["sessions"], pin["digest"]) for pin in document["pins"]] == [
        (2, "set search_path = $1"),
        (1, "select pg_advisory_lock($1)"),
        (1, None),
    ]
    assert (
        document["pins"][2]["reason"] == "The connection ran a SQL query which exceeded the 16384 byte limit."
    )
    assert (
        document["sessions_pinned"],
        document["client_connections_opened"],
        document["client_connections_refused"],
    ) == (4, 2, 1)
    assert document["stats"] == {
        "peak_client_connections": 40,
        "peak_database_connections": None,
        "max_database_connections_allowed": None,
        "borrow_timeouts": None,
        "borrow_latency_us": {"count": 2, "p50": 10},
    }
    assert RunReport().to_json() == {
        "pins": [],
        "sessions_pinned": 0,
        "client_connections_opened": 0,
        "client_connections_refused": 0,
        "stats": None,
    }


def test_the_command_prints_json_and_exits_2_for_a_log_that_is_not_there(tmp_path: Path) -> None:
    (tmp_path / "proxy.log").write_text(LOG)
    command = [sys.executable, "-m", "emulator", "report", "--format", "json", "--log"]
    found = subprocess.run([*command, "proxy.log"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert (found.returncode, json.loads(found.stdout)["sessions_pinned"]) == (0, 4), found.stderr
    missing = subprocess.run(
        [*command, "proxy.lgo"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == "error: --log proxy.lgo: No such file or directory\n"


def test_the_report_printed_to_a_file_fits_80_columns(tmp_path: Path) -> None:
    """It was 140 wide in a file: the reasons and digests of the pins now wrap in their cells."""
    (tmp_path / "proxy.log").write_text(LOG)
    done = subprocess.run(
        [sys.executable, "-m", "emulator", "report", "--log", "proxy.log"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, done.stdout
    assert "Pinned sessions by reason and digest" in done.stdout
    assert "…" not in done.stdout


def _report_command(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (PROXY_LOG_ENV, PROXY_STATS_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "emulator", "report", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_with_the_env_file_sourced_the_command_reads_its_log_and_counters(tmp_path: Path) -> None:
    (tmp_path / "proxy.log").write_text(LOG)
    (tmp_path / "stats.json").write_text(json.dumps({"peak_database_connections": 7}))
    env = {PROXY_LOG_ENV: str(tmp_path / "proxy.log"), PROXY_STATS_ENV: str(tmp_path / "stats.json")}

    done = _report_command("--format", "json", cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["sessions_pinned"], report["stats"]["peak_database_connections"]) == (4, 7)


def test_without_a_log_the_command_says_to_give_one_or_source_the_env_file(tmp_path: Path) -> None:
    unsourced = _report_command(cwd=tmp_path, env={})
    # --log "$LOCAL_TWIN_PROXY_LOG" in a shell that never sourced the file: not "'.' is a directory".
    empty = _report_command("--log", "", cwd=tmp_path, env={})

    assert (unsourced.returncode, empty.returncode) == (2, 2)
    assert unsourced.stderr.startswith("error: no log to read: give --log FILE, or source the file")
    assert empty.stderr.startswith("error: --log is empty: source the file `up --env-file FILE` writes")
    assert PROXY_LOG_ENV in empty.stderr
