"""Rotating the proxy's secret the way a user rotates it on AWS.

The four steps of Secrets Manager's single-user rotation for PostgreSQL (the rotation function AWS
provides, SecretsManagerRDSPostgreSQLRotationSingleUser): createSecret stores a new password as the
secret's AWSPENDING version; setSecret logs in to the database as the secret's user with the current
password and changes its own password (ALTER ROLE ... PASSWORD); testSecret logs in with the new one;
finishSecret moves AWSCURRENT to the new version (AWSPREVIOUS to the old one), and AWSPENDING
is removed. Connections already open are not dropped.

The proxy then follows by itself: it reads the secret again every `secret_refresh_seconds`, and at
once when the database refuses the old password to a new database connection.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from emulator.errors import ComponentError
from emulator.rdsproxy.config import ProxyConfig
from emulator.stack import libpq
from emulator.stack.envfile import PROXY_LOG_ENV, parse_env, write_env_file
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.wait import wait_until

if TYPE_CHECKING:
    from emulator.stack.embedded import EmbeddedStack

COMPONENT = "Secret rotation"


@dataclass(frozen=True)
class DatabaseAddress:
    """Where the rotation reaches the database (the secret's own host field is not used: the kit's
    secret, like RDS Proxy, needs only username and password)."""

    host: str
    port: int
    dbname: str
    sslmode: str = "prefer"


@dataclass(frozen=True)
class Rotation:
    secret_arn: str
    user: str
    previous_version: str
    version: str
    password: str


def rotate_secret(
    secretsmanager: Any, secret_arn: str, database: DatabaseAddress, *, password: str | None = None
) -> Rotation:
    """Rotate the secret (a boto3 Secrets Manager client's) and the database user's password."""
    current = secretsmanager.get_secret_value(SecretId=secret_arn, VersionStage="AWSCURRENT")
    secret = json.loads(current["SecretString"])
    user, old_password = str(secret["username"]), str(secret["password"])
    new_password = password or secrets.token_urlsafe(24)
    token = str(uuid.uuid4())
    # createSecret: the new version, AWSPENDING until it works on the database.
    secretsmanager.put_secret_value(
        SecretId=secret_arn,
        ClientRequestToken=token,
        SecretString=json.dumps({**secret, "password": new_password}),
        VersionStages=["AWSPENDING"],
    )
    # setSecret: the user changes its own password (no superuser needed, as on RDS).
    with _connect(database, user, old_password) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(user), sql.Literal(new_password))
        )
    # testSecret
    with _connect(database, user, new_password) as conn:
        conn.execute("SELECT 1")
    # finishSecret
    secretsmanager.update_secret_version_stage(
        SecretId=secret_arn,
        VersionStage="AWSCURRENT",
        MoveToVersionId=token,
        RemoveFromVersionId=current["VersionId"],
    )
    # A finished rotation leaves AWSPENDING on no version (Secrets Manager removes it after
    # finishSecret); left on, the next rotation would take the secret for one still under way.
    secretsmanager.update_secret_version_stage(
        SecretId=secret_arn, VersionStage="AWSPENDING", RemoveFromVersionId=token
    )
    return Rotation(secret_arn, user, str(current["VersionId"]), token, new_password)


def _connect(database: DatabaseAddress, user: str, password: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            **libpq.connect_kwargs(
                host=database.host,
                port=database.port,
                dbname=database.dbname,
                user=user,
                password=password,
                sslmode=database.sslmode,
                connect_timeout=10,
                application_name="local-twin-rotation",
            ),
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        raise ComponentError(
            COMPONENT,
            f"cannot log in to {database.host}:{database.port} as {user}: {exc}".strip(),
            "the secret must hold the database user's current password",
        ) from exc


def wait_for_proxy(log_path: Path, rotation: Rotation, refresh_seconds: int, *, margin: float = 10) -> float:
    """Wait until the RDS Proxy emulator has read the new version (its log says so); the seconds it
    took. With refresh_seconds 0 it reads the secret only when the database refuses it: no wait."""
    if refresh_seconds <= 0:
        return 0.0
    started = time.monotonic()
    pattern = re.compile(rf"secret {re.escape(rotation.secret_arn)}: version {re.escape(rotation.version)}\.")

    def read_it() -> bool:
        return bool(pattern.search(log_path.read_text(errors="replace")))

    wait_until(
        read_it,
        component=COMPONENT,
        timeout=refresh_seconds + margin,
        hint=f"the proxy's log ({log_path}) does not show the new secret version",
    )
    return time.monotonic() - started


@dataclass(frozen=True)
class Rotated:
    rotation: Rotation
    # Seconds until the RDS Proxy emulator read the new version; None when it was not waited for.
    proxy_seconds: float | None


def rotate_stack_secret(stack: EmbeddedStack) -> Rotated:
    """Rotate a running stack's secret (LocalTwin.rotate_secret) and wait for its proxy to read it."""
    if stack.end_to_end_iam:
        raise ComponentError(COMPONENT, _NOTHING_TO_ROTATE_UNDER_END_TO_END_IAM, _IAM_ONLY)
    if not stack.secret_arn:
        raise ComponentError(COMPONENT, "the stack has no secret to rotate", "the stack has not started")
    pg = stack.postgres
    sslmode = "require" if pg.tls else "prefer"
    rotation = rotate_secret(
        stack.aws.client("secretsmanager"),
        stack.secret_arn,
        DatabaseAddress(pg.host, pg.port, stack.config.database, sslmode),
    )
    stack.db_password = rotation.password
    proxy = stack.proxy
    waited = None
    if isinstance(proxy, RdsProxyEmulator):
        waited = wait_for_proxy(proxy.log_path, rotation, proxy.config.secret_refresh_seconds)
    return Rotated(rotation, waited)


def rotate_from_env_file(env_file: Path, rotated: Callable[[Rotation, float], None] | None = None) -> Rotated:
    """Rotate the secret of the stack a running `up --env-file FILE` describes; FILE's PGPASSWORD
    becomes the new password. `rotated` is told as soon as the database has the new password, with
    the longest the proxy may take to read it (0: no wait)."""
    env = parse_env(env_file.read_text())
    missing = [name for name in _ENV_NEEDED if not env.get(name)]
    if missing:
        raise ComponentError(
            COMPONENT,
            f"{env_file} lacks {', '.join(missing)}",
            "give the file `up --env-file FILE` writes, while that `up` runs",
        )
    log = env.get(PROXY_LOG_ENV)
    # The emulator's configuration sits beside its log (RdsProxyEmulator's workdir).
    try:
        config = ProxyConfig.from_file(Path(log).with_name("proxy.json")) if log else None
    except FileNotFoundError:
        # The stack's directory goes when its `up` stops: the file describes a twin that is gone.
        raise ComponentError(
            COMPONENT,
            f"{env_file} describes a twin that is no longer running (no {Path(str(log)).parent})",
            "start it with `up --env-file FILE` and rotate while that `up` runs",
        ) from None
    if config is not None and config.default_auth_scheme == "IAM_AUTH":
        raise ComponentError(COMPONENT, _NOTHING_TO_ROTATE_UNDER_END_TO_END_IAM, _IAM_ONLY)
    import boto3  # noqa: PLC0415 - `up` itself runs without the SDK

    client = boto3.session.Session().client(
        "secretsmanager",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    database = DatabaseAddress(
        env["PGHOST"], int(env["PGPORT"]), env["PGDATABASE"], env.get("PGSSLMODE") or "prefer"
    )
    rotation = rotate_secret(client, env["DB_SECRET_ARN"], database)
    refresh = max(config.secret_refresh_seconds, 0) if log and config is not None else 0
    new_env = {**env, "PGPASSWORD": rotation.password}
    # With passwords through the proxy, the file changes once the proxy takes the new one: a client
    # that reads it meanwhile still has the password the proxy checks it against. With IAM required
    # there, the password is only psql's, straight to the database: it changes at once.
    file_waits = config is not None and refresh > 0 and config.iam_auth != "REQUIRED"
    if not file_waits:
        write_env_file(env_file, new_env)
    if rotated is not None:
        rotated(rotation, refresh)
    waited = None
    try:
        if log and config is not None:
            waited = wait_for_proxy(Path(log), rotation, config.secret_refresh_seconds)
    finally:
        if file_waits:  # (even when the wait fails: the database has the new password by now)
            write_env_file(env_file, new_env)
    return Rotated(rotation, waited)


_ENV_NEEDED = (
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "DB_SECRET_ARN",
    "PGHOST",
    "PGPORT",
    "PGDATABASE",
)
_NOTHING_TO_ROTATE_UNDER_END_TO_END_IAM = (
    "there is no secret to rotate: the stack's proxy uses no secret under end-to-end IAM "
    "(default_auth_scheme IAM_AUTH)"
)
_IAM_ONLY = (
    "the proxy and its clients log in with IAM tokens, which need no rotation; rotate a secret "
    "only on a stack started without default_auth_scheme=IAM_AUTH"
)
