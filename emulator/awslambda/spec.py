"""What the stack's process needs of a Lambda worker, without importing the worker.

The worker module (emulator.awslambda.worker) loads boto3, botocore's models and both database drivers
at import, for the environments forked from the zygote. The stack's own process never runs a
handler, so it imports only this: the spec it sends and the entry points it names, which import the
worker in the zygote, where it is already loaded (the forkserver's preload).
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

# Preloaded by the forkserver: the zygote imports it once, every worker has it.
WORKER_MODULE = "emulator.awslambda.worker"


@dataclass(frozen=True)
class WorkerSpec:
    # The function's code directory (Lambda's task root, first on sys.path) and its handler,
    # "module.function" with a dotted module path, as Lambda's Handler setting.
    task_root: str
    handler: str
    environment: dict[str, str]
    function_name: str
    function_arn: str
    memory_mb: int
    timeout_seconds: float


# What one Init or invocation printed, and what it cost (the REPORT line's figures).
Meta = dict[str, Any]


def serve(conn: Connection, spec: WorkerSpec) -> None:
    """A worker that runs Init itself, then invocations (emulator.awslambda.worker.serve)."""
    from emulator.awslambda import worker  # noqa: PLC0415 - preloaded in the zygote

    worker.serve(conn, spec)


def serve_snapshot(control: Connection, statuses: Connection, spec: WorkerSpec) -> None:
    """The snapshot template (emulator.awslambda.worker.serve_snapshot)."""
    from emulator.awslambda import worker  # noqa: PLC0415 - preloaded in the zygote

    worker.serve_snapshot(control, statuses, spec)


# The template's report of one environment's end: its pid and its exit code (negative: the signal
# that ended it), 8 bytes, fewer than a pipe writes at once (PIPE_BUF), so never torn.
EXIT_RECORD = "<ii"
