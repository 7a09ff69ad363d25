"""The parts of `up`'s start, timed: `python -m bench.startup_parts SPAWNED_AT` prints them as JSON.

The stack reports no timings of its own, so this child starts the same twin `up` starts (the
default TwinConfig: the emulator with IAM and TLS, the example function, the Invoke API) with the
stack's steps wrapped in timers, and prints one JSON object: each part's start (from the moment the
parent spawned this process, SPAWNED_AT, its time.time()) and duration. A child of its own, so the
imports are as cold as in `up`. moto's process warms up beside the imports; parts on
the stack's moto thread overlap PostgreSQL's.
"""

from __future__ import annotations

import time

STARTED = time.time()

import functools  # noqa: E402 - after the clock starts: the imports are part of what is measured
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

Part = dict[str, Any]


def _wrap(parts: list[Part], owner: Any, method: str, label: str, origin: float) -> None:
    """Replace owner.method by a timed call that appends {label, start, seconds, thread} to parts."""
    original: Callable[..., Any] = getattr(owner, method)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        begun = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            parts.append(
                {
                    "label": label,
                    "start": begun - origin,
                    "seconds": time.time() - begun,
                    "thread": threading.current_thread().name,
                }
            )

    setattr(owner, method, timed)


def main() -> None:
    origin = float(sys.argv[1])
    parts: list[Part] = [{"label": "Python's start", "start": 0.0, "seconds": STARTED - origin, "thread": ""}]
    begun = time.time()
    # As `python -m emulator up` (emulator/__main__.py): moto's process first, then the imports.
    from emulator.stack.moto_process import prestart  # noqa: PLC0415

    prestart()
    parts.append({"label": "moto's process spawned", "start": begun - origin, "seconds": time.time() - begun})
    begun = time.time()
    # What `python -m emulator up` imports before it starts anything.
    import emulator.cli  # noqa: F401, PLC0415
    from emulator.awslambda.function import LambdaFunction  # noqa: PLC0415
    from emulator.awslambda.invoke_api import InvokeApi  # noqa: PLC0415
    from emulator.stack.envfile import write_env_file  # noqa: PLC0415
    from emulator.stack.moto import AwsEmulator  # noqa: PLC0415
    from emulator.stack.postgres import PostgresServer  # noqa: PLC0415
    from emulator.stack.rdsproxy import RdsProxyEmulator  # noqa: PLC0415
    from emulator.stack.tls import LocalCA  # noqa: PLC0415
    from emulator.twin import LocalTwin, TwinConfig  # noqa: PLC0415

    parts.append({"label": "imports (emulator.cli)", "start": begun - origin, "seconds": time.time() - begun})
    for owner, method, label in (
        (LocalCA, "__init__", "certificate authority"),
        (LocalCA, "issue_server", "server certificates"),
        (AwsEmulator, "wait_ready", "moto: until ready (its process)"),
        (AwsEmulator, "create_db_secret", "moto: the DB secret"),
        (PostgresServer, "initialize", "PostgreSQL: data directory"),
        (PostgresServer, "start", "PostgreSQL: server start"),
        (PostgresServer, "create_app_database", "PostgreSQL: database, role"),
        (PostgresServer, "create_proxy_admin_role", "PostgreSQL: proxy's role"),
        (RdsProxyEmulator, "launch", "RDS Proxy emulator: its process"),
        (RdsProxyEmulator, "wait_ready", "RDS Proxy emulator: until ready"),
        (LambdaFunction, "__init__", "Lambda function"),
        (InvokeApi, "__init__", "Lambda Invoke API"),
    ):
        _wrap(parts, owner, method, label, origin)
    with tempfile.TemporaryDirectory(prefix="bench-parts-") as directory, LocalTwin(TwinConfig()) as twin:
        write_env_file(Path(directory) / "stack.env", twin.environment())
        ready = time.time() - origin
    print(json.dumps({"parts": parts, "ready": ready}), flush=True)


if __name__ == "__main__":
    main()
