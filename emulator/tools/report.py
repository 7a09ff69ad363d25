"""A pinning report: what a run through the emulator did, from its log and its counters, as tables
for people or JSON for scripts."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from emulator.rdsproxy.proxylog import DIGEST_PATTERN, PINNED_PATTERN


@dataclass
class RunReport:
    pins: Counter[tuple[str, str]] = field(default_factory=Counter)  # (reason, digest) -> sessions
    clients_connected: int = 0
    clients_refused: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> list[Table | Text]:
        """What to print: the pins by reason and digest (or a line saying there were none), then the
        connections and borrowing."""
        return [self._pins_table() if self.pins else Text(self.nothing_pinned()), self._summary_table()]

    def nothing_pinned(self) -> str:
        if not self.clients_connected:
            # An empty report is more often the wrong file than a perfect run.
            return (
                "No session was pinned, and the log shows no client connection: is it the proxy's log "
                "(LOCAL_TWIN_PROXY_LOG in the env file of `up`)?"
            )
        return (
            f"No session was pinned: RDS Proxy could multiplex all {self.clients_connected} client "
            "connection(s) over its database connections."
        )

    def _pins_table(self) -> Table:
        pins = Table(title="Pinned sessions by reason and digest")
        pins.add_column("sessions", justify="right")
        pins.add_column("reason")
        pins.add_column("digest")
        for (reason, digest), count in self.pins.most_common():
            pins.add_row(str(count), reason, digest or "-")
        return pins

    def _summary_table(self) -> Table:
        summary = Table(title="Connections and borrowing")
        summary.add_column("what")
        summary.add_column("value", justify="right")
        summary.add_row("client connections opened", str(self.clients_connected))
        summary.add_row("client connections refused", str(self.clients_refused))
        summary.add_row("sessions pinned", str(sum(self.pins.values())))
        if self.stats:
            latency = self.stats.get("borrow_latency_us", {})
            summary.add_row("peak client connections", str(self.stats.get("peak_client_connections", "-")))
            summary.add_row(
                "peak database connections", str(self.stats.get("peak_database_connections", "-"))
            )
            summary.add_row(
                "MaxDatabaseConnectionsAllowed", str(self.stats.get("max_database_connections_allowed", "-"))
            )
            summary.add_row("borrows", str(latency.get("count", "-")))
            summary.add_row("borrow latency p50 / p99 / max", _latencies(latency))
            summary.add_row("borrow timeouts", str(self.stats.get("borrow_timeouts", "-")))
        return summary

    def to_json(self) -> dict[str, Any]:
        """The same figures for scripts: pins most frequent first, and the counters the summary shows
        under their /stats names (None where the counters were not read or lack one)."""
        return {
            "pins": [
                {"sessions": count, "reason": reason, "digest": digest or None}
                for (reason, digest), count in self.pins.most_common()
            ],
            "sessions_pinned": sum(self.pins.values()),
            "client_connections_opened": self.clients_connected,
            "client_connections_refused": self.clients_refused,
            "stats": {name: self.stats.get(name) for name in _SUMMARISED_STATS} if self.stats else None,
        }


_SUMMARISED_STATS = (
    "peak_client_connections",
    "peak_database_connections",
    "max_database_connections_allowed",
    "borrow_timeouts",
    "borrow_latency_us",
)


def _latencies(latency: dict[str, int]) -> str:
    if not latency:
        return "-"
    return " / ".join(f"{latency.get(k, 0) / 1000:.1f} ms" for k in ("p50", "p99", "max"))


def read_log(path: Path, report: RunReport | None = None) -> RunReport:
    report = report or RunReport()
    for line in path.read_text(errors="replace").splitlines():
        pin = PINNED_PATTERN.search(line)
        if pin:
            reason = pin["reason"]
            digest = DIGEST_PATTERN.match(reason)
            key = (digest["head"], digest["digest"]) if digest else (reason, "")
            report.pins[key] += 1
        elif "A new client connected from" in line:
            report.clients_connected += 1
        elif "The client connection was refused" in line:
            report.clients_refused += 1
    return report


def read_stats(source: str) -> dict[str, Any]:
    """The emulator's /stats, from its URL or from a saved JSON file."""
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=10) as answer:  # noqa: S310 - the user's own proxy
            data: dict[str, Any] = json.loads(answer.read())
            return data
    loaded: dict[str, Any] = json.loads(Path(source).read_text())
    return loaded
