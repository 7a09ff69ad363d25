"""AWS Lambda handler that reaches PostgreSQL through Amazon RDS Proxy.

It runs unchanged in AWS and against the local twin: everything comes from environment variables,
and boto3 honours AWS_ENDPOINT_URL when it is set (locally), so no code path is local-only.

Environment:
    DB_PROXY_ENDPOINT  host name of the proxy (or of the database, for the no-proxy baseline)
    DB_PORT            default 5432
    DB_NAME, DB_USER   database and role
    AWS_REGION         set by Lambda itself in AWS
    DB_AUTH            "iam" (default): the password is an IAM auth token for the proxy endpoint;
                       "secret": the password from the Secrets Manager secret DB_SECRET_ARN
    DB_SECRET_ARN      the secret {"username": ..., "password": ...} (DB_AUTH=secret), read once
                       per environment, in Init, and again when the database refuses the password
    DB_SSLMODE         default "require"; DB_SSLROOTCERT optionally names a CA file
    DB_CONNECT_TIMEOUT seconds, default 5

Event (all optional):
    {"sleep_ms": 200}  hold the transaction open that long, to stand for real work (capped at 10 s)

A failure fails the invocation the Lambda way: the handler raises RequestFailed, so callers get
FunctionError "Unhandled" and an errorMessage naming the error's type and SQLSTATE (and Lambda
counts it in the function's Errors metric, retries Event invocations, ...). Tokens and passwords
are redacted from the message and the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from typing import Any

import boto3
import psycopg2
import psycopg2.extensions

logger = logging.getLogger()
logger.setLevel(logging.INFO)

MAX_SLEEP_MS = 10_000
# SQLSTATE classes and messages that mean "this connection is gone" or "your credentials were
# refused": both are cured by one reconnect with a fresh token. Anything else is reported.
_AUTH_REFUSED = re.compile(
    r"password authentication failed|IAM authentication failed|is wrong", re.IGNORECASE
)
_SECRETS = re.compile(r"(X-Amz-[A-Za-z-]+=)[^&\s\"']+|(password=)\S+", re.IGNORECASE)


def _auth() -> str:
    """DB_AUTH as the handler reads it everywhere: "iam" unless set, any case."""
    return os.environ.get("DB_AUTH", "iam").lower()


# Execution-environment state: created once per environment (cold start), reused while warm.
# Clients are built in the Init phase, as AWS recommends: it is the slow part of boto3.
_session = boto3.session.Session()
_region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
_rds = _session.client("rds", region_name=_region)
_secrets = _session.client("secretsmanager", region_name=_region) if _auth() == "secret" else None
_connection: psycopg2.extensions.connection | None = None
# DB_AUTH=secret: secret ARN -> its password (see _secret_password)
_secret_passwords: dict[str, str] = {}
_environment = {"invocations": 0, "connections_opened": 0, "cold_start": time.time()}


class _Settings:
    def __init__(self) -> None:
        env = os.environ
        self.host = env["DB_PROXY_ENDPOINT"]
        self.port = int(env.get("DB_PORT", "5432"))
        self.dbname = env["DB_NAME"]
        self.user = env["DB_USER"]
        self.auth = _auth()
        self.secret_arn = env.get("DB_SECRET_ARN", "")
        self.sslmode = env.get("DB_SSLMODE", "require")
        self.sslrootcert = env.get("DB_SSLROOTCERT", "")
        self.connect_timeout = int(env.get("DB_CONNECT_TIMEOUT", "5"))


def _secret_password(arn: str) -> str:
    """The secret's password, read once per environment and kept: Init reads it (the end of this
    module), and _connect forgets it when the database refuses it, as after a rotation."""
    if arn not in _secret_passwords:
        secrets = _secrets or _session.client("secretsmanager", region_name=_region)
        secret = secrets.get_secret_value(SecretId=arn)
        _secret_passwords[arn] = str(json.loads(secret["SecretString"])["password"])
    return _secret_passwords[arn]


def _password(settings: _Settings) -> str:
    if settings.auth == "secret":
        return _secret_password(settings.secret_arn)
    if settings.auth != "iam":
        raise ValueError(f"DB_AUTH must be 'iam' or 'secret', not {settings.auth!r}")
    # A fresh token on every connect: tokens live 15 minutes, connections may live longer.
    return str(
        _rds.generate_db_auth_token(
            DBHostname=settings.host, Port=settings.port, DBUsername=settings.user, Region=_region
        )
    )


def _open(settings: _Settings) -> psycopg2.extensions.connection:
    extra = {"sslrootcert": settings.sslrootcert} if settings.sslrootcert else {}
    conn = psycopg2.connect(
        host=settings.host,
        port=settings.port,
        dbname=settings.dbname,
        user=settings.user,
        password=_password(settings),
        sslmode=settings.sslmode,
        connect_timeout=settings.connect_timeout,
        application_name=os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "lambda-handler"),
        **extra,
    )
    _environment["connections_opened"] += 1
    return conn


def _connect() -> psycopg2.extensions.connection:
    settings = _Settings()
    kept = settings.auth == "secret" and settings.secret_arn in _secret_passwords
    try:
        return _open(settings)
    except psycopg2.OperationalError as error:
        if not (kept and _AUTH_REFUSED.search(str(error))):
            raise
    # The password kept since it was read is refused: the secret was rotated since. Read it again.
    del _secret_passwords[settings.secret_arn]
    return _open(settings)


def _discard_connection() -> None:
    global _connection  # noqa: PLW0603 - the environment's one connection lives at module scope
    if _connection is not None:
        with contextlib.suppress(psycopg2.Error):
            _connection.close()
    _connection = None


def _work(conn: psycopg2.extensions.connection, event: dict[str, Any]) -> dict[str, Any]:
    sleep_ms = min(max(int(event.get("sleep_ms", 0)), 0), MAX_SLEEP_MS)
    # One short transaction; `with conn` commits on success and rolls back on error.
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT now()::text, pg_backend_pid(), current_database(), current_user, "
            "current_setting('server_version')"
        )
        server_time, backend_pid, database, user, version = cur.fetchone()
        if sleep_ms:
            cur.execute("SELECT pg_sleep(%s)", (sleep_ms / 1000.0,))
    return {
        "server_time": server_time,
        "backend_pid": backend_pid,
        "database": database,
        "user": user,
        "server_version": version,
    }


def _retryable(error: psycopg2.Error, opened_now: bool) -> bool:
    """A broken connection, or a token refused at connect (expired): reconnect once. (A kept
    secret the database refuses is read again by _connect itself.)"""
    if isinstance(error, psycopg2.InterfaceError):
        return True
    if isinstance(error, psycopg2.OperationalError):
        if opened_now:
            return _auth() == "iam" and bool(_AUTH_REFUSED.search(str(error)))
        return _connection is None or _connection.closed != 0
    return False


def _sqlstate(error: psycopg2.Error) -> str | None:
    if error.pgcode:
        return str(error.pgcode)
    # libpq reports startup failures as text only; name the ones users must recognise.
    text = str(error)
    if "too many clients" in text or "remaining connection slots are reserved" in text:
        return "53300"
    if _AUTH_REFUSED.search(text):
        return "28P01"
    return None


def redact(text: str) -> str:
    """Never let a token signature or a password reach a log line or a response."""
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


class RequestFailed(Exception):
    """The invocation failed; `error` holds its type, SQLSTATE and (redacted) message."""

    def __init__(self, error: Exception) -> None:
        message = " ".join(redact(str(error).strip()).split())
        sqlstate = _sqlstate(error) if isinstance(error, psycopg2.Error) else None
        self.error = {"type": type(error).__name__, "sqlstate": sqlstate, "message": message}
        super().__init__(f"{type(error).__name__} (SQLSTATE {sqlstate or '-'}): {message}")


def _failure(error: Exception) -> RequestFailed:
    failure = RequestFailed(error)
    logger.error(json.dumps({"event": "db_error", **failure.error}))
    return failure


def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    global _connection  # noqa: PLW0603
    event = event or {}
    _environment["invocations"] += 1
    for attempt in (1, 2):
        opened_now = _connection is None or _connection.closed != 0
        try:
            if opened_now:
                _discard_connection()
                _connection = _connect()
            result = _work(_connection, event)  # type: ignore[arg-type]
        except psycopg2.Error as error:
            if attempt == 1 and _retryable(error, opened_now):
                logger.warning(json.dumps({"event": "reconnect", "reason": redact(str(error).strip())}))
                _discard_connection()
                continue
            if _connection is not None and _connection.closed != 0:
                _discard_connection()
            raise _failure(error) from None
        except Exception as error:  # noqa: BLE001 - any failure is reported the same way, redacted
            raise _failure(error) from None
        return {
            "ok": True,
            "result": result,
            "connection_reused": not opened_now,
            "environment": dict(_environment),
        }
    raise AssertionError("unreachable: the second attempt always returns")


# Init: what every invocation of this environment reuses is read here, as AWS advises (SnapStart's
# snapshot keeps it too). A failure is left to the first invocation, which reports it as its own.
if _auth() == "secret" and os.environ.get("DB_SECRET_ARN"):
    with contextlib.suppress(Exception):
        _secret_password(os.environ["DB_SECRET_ARN"])
