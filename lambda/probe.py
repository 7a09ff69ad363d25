"""The real-AWS stage's probe: runs SQL sessions through the proxy from inside the VPC.

Deployed only when Terraform's `stage_probe` is true (`nox -s aws` sets it): the proxy is private,
so the stage's scenarios (pinning, borrow timeout, TLS required) reach it through this function.
The same code runs in the local twin, where the kit's Lambda emulator runs it.

Event:
    {"sessions": [{"statements": ["SET search_path TO public", "SELECT 1"],
                   "sslmode": "require",        # "disable" tries a plain connection
                   "hold_seconds": 0}],         # stay connected that long after the statements
     "concurrent": false}                       # run the sessions at once, each on a thread

Every session opens a connection of its own, with the function's credentials (an IAM token for the
proxy endpoint, or the secret), runs its statements in autocommit mode and reports, per session,
the first row of each statement or the error (SQLSTATE and message) that ended it.

The probe uses psycopg 3 (lambda/probe-requirements.txt): when a server ends a session with a FATAL
(RDS Proxy's borrow timeout, for one), libpq through psycopg2 reports only "SSL connection has been
closed unexpectedly", while psycopg 3 reports the server's own text.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import index
import psycopg

MAX_SESSIONS = 20
MAX_HOLD_SECONDS = 60


def _run_session(spec: dict[str, Any]) -> dict[str, Any]:
    settings = index._Settings()
    extra = {"sslrootcert": settings.sslrootcert} if settings.sslrootcert else {}
    result: dict[str, Any] = {"rows": [], "error": None}
    started = time.monotonic()
    try:
        conn = psycopg.connect(
            host=settings.host,
            port=settings.port,
            dbname=settings.dbname,
            user=settings.user,
            password=index._password(settings),
            sslmode=str(spec.get("sslmode", settings.sslmode)),
            connect_timeout=settings.connect_timeout,
            application_name="local-twin-stage-probe",
            autocommit=True,
            **extra,
        )
    except psycopg.Error as error:
        result["error"] = _describe(error)
        result["seconds"] = round(time.monotonic() - started, 3)
        return result
    try:
        with conn.cursor() as cur:
            for statement in spec.get("statements", []):
                cur.execute(statement)
                row = cur.fetchone() if cur.description else None
                result["rows"].append(None if row is None else [_plain(value) for value in row])
        hold = min(max(float(spec.get("hold_seconds", 0)), 0.0), MAX_HOLD_SECONDS)
        if hold:
            time.sleep(hold)
    except psycopg.Error as error:
        result["error"] = _describe(error)
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.close()
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _describe(error: psycopg.Error) -> dict[str, Any]:
    return {"sqlstate": error.sqlstate, "message": index.redact(str(error)).strip()}


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    sessions = list(event.get("sessions", []))[:MAX_SESSIONS]
    if event.get("concurrent"):
        with ThreadPoolExecutor(max_workers=max(len(sessions), 1)) as pool:
            results = list(pool.map(_run_session, sessions))
    else:
        results = [_run_session(spec) for spec in sessions]
    return {"sessions": results}
