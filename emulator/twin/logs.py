"""What the twin logged since a checkpoint: the functions' log, the proxy's log and its pins.

A checkpoint is where each log ended when it was taken; reading since one gives whole lines only,
and the checkpoint to read from next, so successive reads neither miss nor repeat a line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emulator.twin.pins import Pin


@dataclass(frozen=True)
class Checkpoint:
    """Byte offsets into the functions' log and the proxy's log (0 where there is none)."""

    function_log: int = 0
    proxy_log: int = 0


@dataclass(frozen=True)
class TwinLogs:
    """The lines logged between two checkpoints."""

    # Init's output and each invocation's, between Lambda's START, END and REPORT lines.
    functions: str
    # The RDS Proxy emulator's, in RDS Proxy's format ("" with another proxy).
    proxy: str
    pins: tuple[Pin, ...]
    # Where these logs end: the checkpoint to read from next.
    until: Checkpoint


def read_since(path: Path | None, offset: int) -> tuple[str, int]:
    """The whole lines appended to a file since offset, and the offset after them."""
    if path is None:
        return "", offset
    try:
        with path.open("rb") as log:
            log.seek(offset)
            data = log.read()
    except FileNotFoundError:
        return "", offset
    # A line still being written is left for the next read.
    complete = data[: data.rfind(b"\n") + 1]
    return complete.decode(errors="replace"), offset + len(complete)


def end_of(path: Path | None) -> int:
    """The offset after the last whole line of a file (0 when it does not exist yet)."""
    if path is None:
        return 0
    try:
        with path.open("rb") as log:
            end = log.seek(0, 2)
            while end > 0:
                start = max(0, end - _CHUNK)
                log.seek(start)
                newline = log.read(end - start).rfind(b"\n")
                if newline >= 0:
                    return start + newline + 1
                end = start
    except FileNotFoundError:
        pass
    return 0


_CHUNK = 65536
