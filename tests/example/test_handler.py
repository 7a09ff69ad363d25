"""The handler's own logic, with fake database connections and fake AWS clients."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg2
import pytest

from emulator.paths import HANDLER_FILE
from tests.support.inprocess import InProcessEnvironment

pytestmark = pytest.mark.unit

TOKEN_SIGNATURE = "d1e2a3d4b5e6e7f8" * 4


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> None:
        if self.conn.fail_next is not None:
            error, self.conn.fail_next = self.conn.fail_next, None
            if isinstance(error, psycopg2.OperationalError):
                self.conn.closed = 2
            raise error
        self.conn.statements.append((sql, params))

    def fetchone(self) -> tuple[Any, ...]:
        return ("2026-01-01 00:00:00+00", self.conn.pid, "app", "app_user", "15.0")


class FakeConnection:
    def __init__(self, pid: int, **kwargs: Any) -> None:
        self.pid = pid
        self.kwargs = kwargs
        self.closed = 0
        self.statements: list[tuple[str, Any]] = []
        self.fail_next: Exception | None = None
        self.commits = 0

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.commits += 1

    def close(self) -> None:
        self.closed = 1


class FakeRds:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def generate_db_auth_token(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        n = len(self.calls)
        return (
            f"{kwargs['DBHostname']}:{kwargs['Port']}/?Action=connect&DBUser={kwargs['DBUsername']}"
            f"&X-Amz-Date=20260101T00000{n}Z&X-Amz-Signature={TOKEN_SIGNATURE}{n}"
        )


SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db"


class FakeSecrets:
    """Secrets Manager: the secret's password is "from-the-secret", then "rotated-1", "rotated-2"...
    after each rotate(); or every read fails, with failing=True."""

    def __init__(self, *, failing: bool = False) -> None:
        self.reads = 0
        self.rotations = 0
        self.failing = failing

    def rotate(self) -> None:
        self.rotations += 1

    def get_secret_value(self, SecretId: str) -> dict[str, str]:
        assert SecretId == SECRET_ARN
        self.reads += 1
        if self.failing:
            raise ConnectionError("Could not connect to the endpoint URL")
        password = f"rotated-{self.rotations}" if self.rotations else "from-the-secret"
        return {"SecretString": json.dumps({"username": "app_user", "password": password})}


PASSWORD_REFUSED = 'FATAL:  password authentication failed for user "app_user"'


class FakeDatabase:
    """psycopg2.connect stand-in: records every connect and can refuse the next ones; with a
    password set, refuses any other as PostgreSQL does."""

    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []
        self.refusals: list[Exception] = []
        self.password: str | None = None
        self.attempts = 0

    def connect(self, **kwargs: Any) -> FakeConnection:
        self.attempts += 1
        if self.refusals:
            raise self.refusals.pop(0)
        if self.password is not None and kwargs["password"] != self.password:
            raise psycopg2.OperationalError(PASSWORD_REFUSED)
        conn = FakeConnection(pid=1000 + len(self.connections), **kwargs)
        self.connections.append(conn)
        return conn


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PROXY_ENDPOINT", "proxy.example.internal")
    monkeypatch.setenv("DB_PORT", "5432")
    monkeypatch.setenv("DB_NAME", "app")
    monkeypatch.setenv("DB_USER", "app_user")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNITTEST00000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-test-secret")
    monkeypatch.delenv("DB_AUTH", raising=False)
    monkeypatch.delenv("DB_SSLMODE", raising=False)
    monkeypatch.delenv("DB_SSLROOTCERT", raising=False)


@pytest.fixture
def fakes(
    env: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[InProcessEnvironment, FakeDatabase, FakeRds]]:
    environment = InProcessEnvironment(HANDLER_FILE)
    database, rds = FakeDatabase(), FakeRds()
    module = environment.module
    monkeypatch.setattr(module.psycopg2, "connect", database.connect)
    monkeypatch.setattr(module, "_rds", rds)
    monkeypatch.setattr(module, "_secrets", FakeSecrets())
    return environment, database, rds


def test_the_connection_is_opened_once_per_environment_and_reused(fakes: Any) -> None:
    environment, database, _ = fakes
    first = environment.invoke({})
    second = environment.invoke({})
    assert first["ok"]
    assert second["ok"]
    assert len(database.connections) == 1
    assert first["connection_reused"] is False
    assert second["connection_reused"] is True
    assert second["environment"]["invocations"] == 2
    assert second["environment"]["connections_opened"] == 1


def test_each_environment_has_its_own_connection(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    database = FakeDatabase()
    environments = [InProcessEnvironment(HANDLER_FILE) for _ in range(2)]
    for environment in environments:
        monkeypatch.setattr(environment.module.psycopg2, "connect", database.connect)
        monkeypatch.setattr(environment.module, "_rds", FakeRds())
        environment.invoke({})
    assert len(database.connections) == 2


def test_the_password_is_an_iam_token_for_the_proxy_endpoint_over_tls(fakes: Any) -> None:
    environment, database, rds = fakes
    environment.invoke({})
    assert rds.calls == [
        {
            "DBHostname": "proxy.example.internal",
            "Port": 5432,
            "DBUsername": "app_user",
            "Region": "us-east-1",
        }
    ]
    kwargs = database.connections[0].kwargs
    assert kwargs["password"].startswith("proxy.example.internal:5432/?Action=connect&DBUser=app_user")
    assert kwargs["sslmode"] == "require"
    assert (kwargs["host"], kwargs["port"], kwargs["dbname"], kwargs["user"]) == (
        "proxy.example.internal",
        5432,
        "app",
        "app_user",
    )


def test_secret_auth_reads_the_password_from_secrets_manager(
    fakes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment, database, rds = fakes
    monkeypatch.setenv("DB_AUTH", "secret")
    monkeypatch.setenv("DB_SECRET_ARN", SECRET_ARN)
    assert environment.invoke({})["ok"]
    assert database.connections[0].kwargs["password"] == "from-the-secret"
    assert rds.calls == []


@pytest.fixture
def secret_auth(env: None, monkeypatch: pytest.MonkeyPatch) -> FakeSecrets:
    """DB_AUTH=secret from the start, and AWS clients that are fakes by the time Init makes them."""
    monkeypatch.setenv("DB_AUTH", "secret")
    monkeypatch.setenv("DB_SECRET_ARN", SECRET_ARN)
    secrets = FakeSecrets()
    made = {"secretsmanager": secrets, "rds": FakeRds()}
    monkeypatch.setattr(boto3.session.Session, "client", lambda self, name, **_: made[name])
    return secrets


def test_secret_auth_reads_the_secret_in_init_and_keeps_it_for_every_connection(
    secret_auth: FakeSecrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = InProcessEnvironment(HANDLER_FILE)
    assert secret_auth.reads == 1, "Init reads the secret"
    database = FakeDatabase()
    monkeypatch.setattr(environment.module.psycopg2, "connect", database.connect)
    environment.invoke({})
    database.connections[0].fail_next = psycopg2.OperationalError("server closed the connection unexpectedly")
    assert environment.invoke({})["ok"]
    assert [c.kwargs["password"] for c in database.connections] == ["from-the-secret"] * 2
    assert secret_auth.reads == 1


@pytest.fixture
def secret_environment(
    secret_auth: FakeSecrets, monkeypatch: pytest.MonkeyPatch
) -> tuple[InProcessEnvironment, FakeDatabase]:
    """An environment whose Init read the secret, over a database that takes only its password."""
    environment = InProcessEnvironment(HANDLER_FILE)
    database = FakeDatabase()
    database.password = "from-the-secret"
    monkeypatch.setattr(environment.module.psycopg2, "connect", database.connect)
    return environment, database


def test_a_kept_secret_the_database_refuses_is_read_again_once(
    secret_auth: FakeSecrets, secret_environment: tuple[InProcessEnvironment, FakeDatabase]
) -> None:
    environment, database = secret_environment
    secret_auth.rotate()
    database.password = "rotated-1"
    assert environment.invoke({})["ok"]
    assert secret_auth.reads == 2
    assert database.attempts == 2
    assert database.connections[0].kwargs["password"] == "rotated-1"


def test_a_rotation_found_while_replacing_a_broken_connection_costs_no_invocation(
    secret_auth: FakeSecrets, secret_environment: tuple[InProcessEnvironment, FakeDatabase]
) -> None:
    environment, database = secret_environment
    environment.invoke({})
    secret_auth.rotate()
    database.password = "rotated-1"
    database.connections[0].fail_next = psycopg2.OperationalError("server closed the connection unexpectedly")
    response = environment.invoke({})
    assert response["ok"], response
    assert database.connections[1].kwargs["password"] == "rotated-1"


def test_a_secret_refused_just_after_it_was_read_is_reported_without_more_tries(
    secret_auth: FakeSecrets, secret_environment: tuple[InProcessEnvironment, FakeDatabase]
) -> None:
    environment, database = secret_environment
    database.password = "set-by-hand-not-in-the-secret"
    assert _failure(environment, {})["sqlstate"] == "28P01"
    assert secret_auth.reads == 2, "Init's read, and one more after the refusal"
    assert database.attempts == 2


def test_a_secret_init_could_not_read_fails_the_first_invocation_with_the_reason(
    secret_auth: FakeSecrets,
) -> None:
    secret_auth.failing = True
    environment = InProcessEnvironment(HANDLER_FILE)  # Init itself does not fail
    assert secret_auth.reads == 1
    error = _failure(environment, {})
    assert error["type"] == "ConnectionError"
    assert "Could not connect to the endpoint URL" in error["message"]
    assert secret_auth.reads == 2


def test_a_broken_connection_is_replaced_once_with_a_fresh_token(fakes: Any) -> None:
    environment, database, rds = fakes
    environment.invoke({})
    database.connections[0].fail_next = psycopg2.OperationalError("server closed the connection unexpectedly")
    response = environment.invoke({})
    assert response["ok"], response
    assert len(database.connections) == 2
    assert len(rds.calls) == 2
    assert database.connections[0].kwargs["password"] != database.connections[1].kwargs["password"]
    assert response["connection_reused"] is False


def test_a_refused_token_is_retried_once_with_a_fresh_one(fakes: Any) -> None:
    environment, database, rds = fakes
    database.refusals.append(
        psycopg2.OperationalError(
            'connection to server failed: FATAL:  IAM authentication failed for user "app_user". '
            "Check the IAM token for this user and try again."
        )
    )
    response = environment.invoke({})
    assert response["ok"], response
    assert len(rds.calls) == 2


def _failure(environment: Any, event: dict[str, Any]) -> dict[str, Any]:
    """The invocation fails the Lambda way (the handler raises); what the error says."""
    with pytest.raises(Exception, match=r"\(SQLSTATE") as caught:
        environment.invoke(event)
    assert type(caught.value).__name__ == "RequestFailed", caught.value
    error: dict[str, Any] = caught.value.error  # type: ignore[attr-defined]
    assert str(caught.value) == f"{error['type']} (SQLSTATE {error['sqlstate'] or '-'}): {error['message']}"
    return error


def test_a_token_refused_twice_is_reported_without_a_third_try(fakes: Any) -> None:
    environment, database, rds = fakes
    refusal = 'FATAL:  password authentication failed for user "app_user"'
    database.refusals += [psycopg2.OperationalError(refusal), psycopg2.OperationalError(refusal)]
    assert _failure(environment, {})["sqlstate"] == "28P01"
    assert len(rds.calls) == 2


def test_too_many_clients_fails_the_invocation_and_is_not_retried(fakes: Any) -> None:
    environment, database, rds = fakes
    database.refusals.append(
        psycopg2.OperationalError(
            'connection to server at "10.0.0.1", port 5432 failed: FATAL:  sorry, too many clients already'
        )
    )
    message = 'connection to server at "10.0.0.1", port 5432 failed: FATAL: sorry, too many clients already'
    assert _failure(environment, {}) == {"type": "OperationalError", "sqlstate": "53300", "message": message}
    assert len(rds.calls) == 1


def test_an_sql_error_is_reported_and_the_connection_kept(fakes: Any) -> None:
    environment, database, _ = fakes
    environment.invoke({})
    error = psycopg2.ProgrammingError("relation does not exist")
    database.connections[0].fail_next = error
    assert _failure(environment, {})["type"] == "ProgrammingError"
    assert environment.invoke({})["connection_reused"] is True
    assert len(database.connections) == 1


def test_tokens_never_reach_logs_or_responses(fakes: Any, caplog: pytest.LogCaptureFixture) -> None:
    environment, database, rds = fakes
    token = rds.generate_db_auth_token(DBHostname="h", Port=1, DBUsername="u")
    rds.calls.clear()
    leak = f"FATAL:  password authentication failed for token {token}"
    database.refusals += [psycopg2.OperationalError(leak), psycopg2.OperationalError(leak)]
    with caplog.at_level(logging.INFO):
        error = _failure(environment, {})
    text = json.dumps(error) + caplog.text
    assert TOKEN_SIGNATURE not in text
    assert "X-Amz-Signature=***" in error["message"]


def test_the_result_is_json_and_the_work_is_one_committed_transaction(fakes: Any) -> None:
    environment, database, _ = fakes
    response = environment.invoke({"sleep_ms": 50})
    assert json.loads(json.dumps(response)) == response
    conn = database.connections[0]
    assert conn.commits == 1
    assert ("SELECT pg_sleep(%s)", (0.05,)) in conn.statements


def test_simulated_work_is_capped_at_ten_seconds(fakes: Any) -> None:
    environment, database, _ = fakes
    environment.invoke({"sleep_ms": 3_600_000})
    assert ("SELECT pg_sleep(%s)", (10.0,)) in database.connections[0].statements


def test_configuration_errors_fail_the_invocation_with_their_reason(
    fakes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment, _, _ = fakes
    monkeypatch.setenv("DB_AUTH", "kerberos")
    error = _failure(environment, {})
    assert error["type"] == "ValueError"
    assert "DB_AUTH" in error["message"]


def test_shutting_an_environment_down_closes_its_connection(fakes: Any) -> None:
    environment, database, _ = fakes
    environment.invoke({})
    environment.shutdown()
    assert database.connections[0].closed == 1
