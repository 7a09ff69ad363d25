"""The handler, invoked in-process against real PostgreSQL, directly and through PgBouncer."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from emulator.stack.embedded import StackEnvironment
from tests.support.inprocess import InProcessEnvironment, function_environment

pytestmark = pytest.mark.integration


@pytest.fixture
def direct_environment(pooled_stack: StackEnvironment) -> Iterator[InProcessEnvironment]:
    with function_environment(pooled_stack.handler_environment(pooled_stack.direct)):
        environment = InProcessEnvironment()
        yield environment
        environment.shutdown()


@pytest.fixture
def proxied_environment(pooled_stack: StackEnvironment) -> Iterator[InProcessEnvironment]:
    with function_environment(pooled_stack.handler_environment()):
        environment = InProcessEnvironment()
        yield environment
        environment.shutdown()


def _ssl_in_use(stack: StackEnvironment, backend_pid: int) -> bool:
    with stack.postgres.admin_connection() as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = %s", (backend_pid,)).fetchone()
    assert row is not None
    return bool(row[0])


def test_directly_with_the_secret_over_tls(
    pooled_stack: StackEnvironment, direct_environment: InProcessEnvironment
) -> None:
    response = direct_environment.invoke({})
    assert response["ok"], response
    assert response["result"]["user"] == pooled_stack.config.db_user
    assert _ssl_in_use(pooled_stack, response["result"]["backend_pid"])


def test_a_warm_environment_reuses_its_backend(direct_environment: InProcessEnvironment) -> None:
    first = direct_environment.invoke({})
    second = direct_environment.invoke({})
    assert second["connection_reused"] is True
    assert first["result"]["backend_pid"] == second["result"]["backend_pid"]


def test_a_killed_backend_is_replaced_on_the_next_invocation(
    pooled_stack: StackEnvironment, direct_environment: InProcessEnvironment
) -> None:
    first = direct_environment.invoke({})
    with pooled_stack.postgres.admin_connection() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (first["result"]["backend_pid"],))
    second = direct_environment.invoke({})
    assert second["ok"], second
    assert second["result"]["backend_pid"] != first["result"]["backend_pid"]
    assert second["environment"]["connections_opened"] == 2


def test_through_the_pooler_with_a_real_iam_token(
    pooled_stack: StackEnvironment, proxied_environment: InProcessEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens: list[str] = []
    rds = proxied_environment.module._rds
    real = rds.generate_db_auth_token

    def recording(**kwargs: Any) -> str:
        token: str = real(**kwargs)
        tokens.append(token)
        return token

    monkeypatch.setattr(rds, "generate_db_auth_token", recording)
    response = proxied_environment.invoke({"sleep_ms": 10})
    assert response["ok"], response
    # boto3 signed a SigV4 presigned URL for the proxy endpoint and the DB user.
    host_port, _, query = tokens[0].partition("/?")
    params = urllib.parse.parse_qs(query)
    assert host_port == f"{pooled_stack.proxy.host}:{pooled_stack.proxy.port}"
    assert params["Action"] == ["connect"]
    assert params["DBUser"] == [pooled_stack.config.db_user]
    assert params["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert params["X-Amz-Credential"][0].endswith("/rds-db/aws4_request")
    assert len(params["X-Amz-Signature"][0]) == 64
