"""compose.yaml, checked without a Docker engine: what people with Docker will run."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from emulator.paths import COMPOSE_FILE

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def test_it_has_the_stack_parts(compose: dict[str, Any]) -> None:
    assert {"postgres", "pgbouncer", "moto", "secret", "localstack"} <= set(compose["services"])


def test_every_published_port_is_bound_to_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_pgbouncer_is_1_21_or_later_with_prepared_statements_in_transaction_mode(
    compose: dict[str, Any],
) -> None:
    pgbouncer = compose["services"]["pgbouncer"]
    version = re.search(r":v?(\d+)\.(\d+)", pgbouncer["image"])
    assert version is not None
    assert (int(version[1]), int(version[2])) >= (1, 21)
    env = pgbouncer["environment"]
    assert env["POOL_MODE"] == "transaction"
    assert int(env["MAX_PREPARED_STATEMENTS"]) > 0


def test_moto_is_the_aws_endpoint_on_4566_with_managed_policies(compose: dict[str, Any]) -> None:
    moto = compose["services"]["moto"]
    assert moto["environment"]["MOTO_PORT"] == "4566"
    assert moto["environment"]["MOTO_IAM_LOAD_MANAGED_POLICIES"] == "true"
    assert any(str(port).endswith(":4566") and "MOTO_HOST_PORT:-4566" in str(port) for port in moto["ports"])


def test_localstack_is_optional_and_takes_an_auth_token(compose: dict[str, Any]) -> None:
    localstack = compose["services"]["localstack"]
    assert localstack["profiles"] == ["localstack"]
    assert "LOCALSTACK_AUTH_TOKEN" in localstack["environment"]


def test_postgres_is_small_and_speaks_tls(compose: dict[str, Any]) -> None:
    command = " ".join(compose["services"]["postgres"]["command"])
    assert "max_connections=${MAX_CONNECTIONS:-20}" in command
    assert "ssl=on" in command


def test_the_secret_has_the_shape_rds_proxy_reads(compose: dict[str, Any]) -> None:
    command = " ".join(compose["services"]["secret"]["command"])
    assert (
        '{"username": "${APP_USER:-app_user}", "password": "${APP_PASSWORD:-local-twin-password}"}' in command
    )
