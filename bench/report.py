"""Results: one area per goal of issue 16, its figures beside their goals, as text or Markdown.

Text goes to a terminal or a CI log: every line fits WIDTH columns (a long first cell wraps onto
lines of its own, notes wrap). Markdown is the README's performance section and has no such limit.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH = 80
GAP = "  "


@dataclass(frozen=True)
class Figure:
    measure: str
    value: str
    goal: str = ""
    # None: no goal, or a goal this run cannot judge (a note says why).
    met: bool | None = None
    stretch_met: bool = False

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "n/a" if self.goal else ""
        if self.met:
            return "yes*" if self.stretch_met else "yes"
        return "NO"


def at_least(
    measure: str, value: float, goal: float, *, stretch: float | None = None, digits: int = 2, unit: str = ""
) -> Figure:
    met = value >= goal
    return Figure(
        measure,
        f"{value:.{digits}f}{unit}",
        f"≥ {goal:.{digits}f}{unit}",
        met,
        stretch is not None and value >= stretch,
    )


def at_most(measure: str, value: float, goal: float, *, digits: int = 1, unit: str = "") -> Figure:
    return Figure(measure, f"{value:.{digits}f}{unit}", f"≤ {goal:.{digits}f}{unit}", value <= goal)


def unjudged(figure: Figure, why: str) -> tuple[Figure, str]:
    """The same figure with its goal kept but not judged (met=None), and the note that says why."""
    return Figure(figure.measure, figure.value, figure.goal, None), f"{figure.measure}: not judged: {why}"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""


@dataclass
class Area:
    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    # The raw measurements behind the figures (tps per target, time per part, memory per process).
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Set when the area could not finish; its figures so far are still reported.
    error: str | None = None
    seconds: float = 0.0
    load_before: str = ""
    load_after: str = ""


def progress(area: str, message: str) -> None:
    """A line on stderr while a long part runs, so minutes of measuring are never silent."""
    print(f"  [{area}] {message}", file=sys.stderr, flush=True)


def _text_table(table: Table, width: int = WIDTH) -> list[str]:
    widths = [len(header) for header in table.headers]
    for row in table.rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    # The first column names the row: it gives up room first, its text wrapping onto lines of its own.
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - width
    if excess > 0:
        widths[0] = max(12, widths[0] - excess)

    def lines_of(cells: Sequence[str]) -> list[str]:
        first, *rest = cells
        wrapped = textwrap.wrap(first, widths[0]) or [""]
        figures = [cell.rjust(w) for cell, w in zip(rest, widths[1:], strict=True)]
        head = GAP.join([wrapped[-1].ljust(widths[0]), *figures]).rstrip()
        return [*wrapped[:-1], head]

    lines = [table.title] if table.title else []
    lines += lines_of(table.headers)
    lines.append(GAP.join("-" * w for w in widths))
    for row in table.rows:
        lines += lines_of(row)
    return lines


def _figures_table(figures: Sequence[Figure]) -> Table:
    return Table(
        ["measure", "figure", "goal", "met"], [[f.measure, f.value, f.goal, f.verdict] for f in figures]
    )


def _note_lines(notes: Sequence[str], width: int = WIDTH) -> list[str]:
    lines = []
    for note in notes:
        lines += textwrap.wrap(note, width, initial_indent="* ", subsequent_indent="  ")
    return lines


def render_text(area: Area) -> str:
    lines = [f"== {area.title} ==", f"({area.seconds:.0f} s; load average before {area.load_before})"]
    for table in area.tables:
        lines += ["", *_text_table(table)]
    if area.figures:
        lines += ["", *_text_table(_figures_table(area.figures))]
    if area.notes:
        lines += ["", *_note_lines(area.notes)]
    if area.error:
        lines += textwrap.wrap(f"!! did not finish: {area.error}", WIDTH, subsequent_indent="   ")
    return "\n".join(lines)


def render_summary(areas: Sequence[Area]) -> str:
    lines = ["== The goals of issue 16: figures of this run =="]
    for area in areas:
        lines += ["", area.title]
        judged = [figure for figure in area.figures if figure.goal]
        if judged:
            lines += _text_table(_figures_table(judged))
        if area.error:
            lines += textwrap.wrap(f"!! did not finish: {area.error}", WIDTH, subsequent_indent="   ")
    lines += ["", "met: yes* = the stretch goal too; n/a = not judged in this run (see the notes)"]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|") or " "


def _md_table(table: Table) -> list[str]:
    lines = [f"*{table.title}*", ""] if table.title else []
    lines.append("| " + " | ".join(_md_cell(h) for h in table.headers) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(table.headers) - 1)) + "|")
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in table.rows]
    return [*lines, ""]


def render_markdown(
    machine: Sequence[tuple[str, str]],
    areas: Sequence[Area],
    command: str,
    *,
    caveat: str | None = None,
    heading: str = "###",
) -> str:
    """The README's performance section: the command and machine, then each area's figures."""
    lines = [f"{heading} Measured figures", "", f"`{command}` on:", ""]
    lines += [f"- {name}: {value}" for name, value in machine]
    lines.append("")
    if caveat:
        lines += [f"**{caveat[0].upper()}{caveat[1:]}.**", ""]
    for area in areas:
        lines += [f"{heading}# {area.title}", ""]
        lines += [
            f"_{area.seconds:.0f} s; load average before {area.load_before}, after {area.load_after}_",
            "",
        ]
        if area.figures:
            lines += _md_table(_figures_table(area.figures))
        for table in area.tables:
            lines += _md_table(table)
        lines += [f"- {note}" for note in area.notes]
        if area.error:
            lines.append(f"- **Did not finish:** {area.error}")
        lines.append("")
    lines.append("met: yes* = the stretch goal too; n/a = not judged in this run (see the notes).")
    return "\n".join(lines).rstrip() + "\n"
