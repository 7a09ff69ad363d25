"""Where the tools print (demo, report): a terminal at its own width, anything else at 80 columns."""

from __future__ import annotations

import sys
import textwrap
from typing import IO

from rich.console import Console

# A file, a pipe or a CI log has no width of its own: 80 columns read everywhere.
WIDTH = 80


def console(file: IO[str] | None = None) -> Console:
    return Console(file=file, width=None if (file or sys.stdout).isatty() else WIDTH)


def note(text: str, out: Console, indent: str = "", continued: str = "") -> str:
    """text wrapped to 80 columns (or a narrower terminal's): its first line indented by indent, the
    others by continued."""
    return textwrap.fill(
        text,
        width=min(WIDTH, out.width),
        initial_indent=indent,
        subsequent_indent=continued,
        break_on_hyphens=False,
    )
