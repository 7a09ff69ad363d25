"""The comparison report: each scenario's figures on the local twin beside the same on AWS."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

TARGETS = ("local", "aws")


@dataclass(frozen=True)
class Row:
    scenario: str
    figure: str
    local: Any
    aws: Any

    @property
    def verdict(self) -> str:
        if self.local is None or self.aws is None:
            return "not measured on both"
        return "same" if self.local == self.aws else "differs"


def load(results: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Each target's figures, as tests/aws wrote them (a target that did not run is empty)."""
    found = {}
    for target in TARGETS:
        path = results / f"{target}.json"
        found[target] = json.loads(path.read_text()) if path.exists() else {}
    return found


def rows(figures: dict[str, dict[str, dict[str, Any]]]) -> list[Row]:
    local, aws = figures["local"], figures["aws"]
    out = []
    for scenario in sorted(set(local) | set(aws)):
        mine, theirs = local.get(scenario, {}), aws.get(scenario, {})
        for figure in sorted(set(mine) | set(theirs)):
            out.append(Row(scenario, figure, mine.get(figure), theirs.get(figure)))
    return out


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "; ".join(str(item) for item in value)
    return str(value)


def markdown(table: list[Row]) -> str:
    lines = [
        "| scenario | figure | local twin | AWS | |",
        "|---|---|---|---|---|",
    ]
    for row in table:
        cells = [row.scenario, row.figure, _shown(row.local), _shown(row.aws), row.verdict]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: Path, console: Console | None = None) -> Path:
    """Print the comparison and write it as comparison.md and comparison.json; return the .md."""
    table = rows(load(results))
    shown = Table(title="The local twin beside AWS, same workload")
    for column in ("scenario", "figure", "local twin", "AWS", ""):
        shown.add_column(column)
    for row in table:
        style = {"same": "green", "differs": "yellow"}.get(row.verdict, "dim")
        shown.add_row(row.scenario, row.figure, _shown(row.local), _shown(row.aws), row.verdict, style=style)
    (console or Console()).print(shown)
    report = results / "comparison.md"
    report.write_text("# The local twin beside AWS\n\n" + markdown(table))
    (results / "comparison.json").write_text(
        json.dumps([row.__dict__ | {"verdict": row.verdict} for row in table], indent=2, default=str)
    )
    return report
