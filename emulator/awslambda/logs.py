"""A function's log as Lambda writes it: START, what the code printed, END and REPORT per invocation.

The environments print into files of their own; after each Init and invocation the function takes
what was printed, frames it with Lambda's lines, keeps it for LogType=Tail and appends it to the
function's log (its CloudWatch log group in AWS; here a file, or the caller's stdout).
"""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

# LogType=Tail returns the end of the invocation's log, base64-encoded, at most this many bytes.
TAIL_BYTES = 4096


def invocation_log(
    request_id: str,
    output: bytes,
    *,
    duration_ms: float,
    memory_mb: int,
    max_memory_mb: int,
    init: tuple[bytes, float] | None = None,
    timed_out: str | None = None,
) -> bytes:
    """One invocation's lines; init is (Init's output, its duration) on a cold start."""
    lines = []
    init_output, init_ms = init if init is not None else (b"", 0.0)
    start = f"START RequestId: {request_id} Version: $LATEST\n".encode()
    end = f"END RequestId: {request_id}\n".encode()
    report = (
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
        f"Billed Duration: {math.ceil(duration_ms)} ms\tMemory Size: {memory_mb} MB\t"
        f"Max Memory Used: {max_memory_mb} MB"
    )
    if init is not None:
        report += f"\tInit Duration: {init_ms:.2f} ms"
    if timed_out is not None:
        report += "\tStatus: timeout"
    lines = [init_output, start, output]
    if output and not output.endswith(b"\n"):
        lines.append(b"\n")
    if timed_out is not None:
        lines.append(f"{timed_out}\n".encode())
    lines += [end, (report + "\n").encode()]
    return b"".join(lines)


def tail(log: bytes) -> bytes:
    return log[-TAIL_BYTES:]


class FunctionLog:
    """Where a function's log goes: appended to a file, or written to the caller's stdout."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            if self.path is not None:
                with self.path.open("ab") as sink:
                    sink.write(data)
                return
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
