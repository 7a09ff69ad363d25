"""Reading a user's Terraform without contracts: its variables, its state, its endpoints mapped."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.terraform.applied import LocalAddress, map_endpoints, state_resources
from emulator.terraform.workspace import declared_variables, without_tflocal_banner

pytestmark = pytest.mark.unit

PROXY = LocalAddress("orders-proxy.proxy-abc.us-east-1.rds.amazonaws.com", 5432, "127.0.0.1", 41000)
DATABASE = LocalAddress("orders-db.abc.us-east-1.rds.amazonaws.com", 5432, "127.0.0.1", 42000)


def test_a_variable_holding_the_proxy_endpoint_gets_the_local_proxy_and_its_port() -> None:
    env = {"DB_HOST": PROXY.remote_host, "DB_PORT": "5432", "DB_NAME": "orders", "REGION": "eu-west-1"}
    assert map_endpoints(env, [PROXY, DATABASE]) == {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": "41000",
        "DB_NAME": "orders",
        "REGION": "eu-west-1",
    }


def test_the_port_beside_each_host_follows_its_own_endpoint() -> None:
    env = {
        "PROXY_ENDPOINT": PROXY.remote_host,
        "PROXY_PORT": "5432",
        "ADMIN_DB_ADDRESS": DATABASE.remote_host,
        "ADMIN_DB_PORT": "5432",
    }
    assert map_endpoints(env, [PROXY, DATABASE]) == {
        "PROXY_ENDPOINT": "127.0.0.1",
        "PROXY_PORT": "41000",
        "ADMIN_DB_ADDRESS": "127.0.0.1",
        "ADMIN_DB_PORT": "42000",
    }


def test_an_endpoint_inside_a_url_is_replaced_with_its_port() -> None:
    env = {"DATABASE_URL": f"postgresql://app@{PROXY.remote_host}:5432/orders?sslmode=require"}
    assert map_endpoints(env, [PROXY]) == {
        "DATABASE_URL": "postgresql://app@127.0.0.1:41000/orders?sslmode=require"
    }


def test_variables_that_name_no_endpoint_are_left_alone() -> None:
    env = {"PORT": "5432", "HOST": "example.com"}
    assert map_endpoints(env, [PROXY]) == env


def test_declared_variables_are_read_from_the_root_module(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        'variable "function_zip" {}\n  variable "service" {\n  default = "x"\n}\n'
    )
    (tmp_path / "extra.tf.json").write_text('{"variable": {"region": {"default": "us-east-1"}}}')
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "inner.tf").write_text('variable "not_the_root_s" {}\n')
    assert declared_variables(tmp_path) == ["function_zip", "region", "service"]


def test_resources_are_found_in_child_modules_too() -> None:
    proxy = {"mode": "managed", "type": "aws_db_proxy", "address": "module.db.aws_db_proxy.this"}
    state = {
        "values": {
            "root_module": {
                "resources": [
                    {"mode": "data", "type": "aws_db_proxy", "address": "data.aws_db_proxy.x"},
                    {
                        "mode": "managed",
                        "type": "aws_lambda_function",
                        "address": "aws_lambda_function.api",
                        "values": {"arn": "arn:aws:lambda:eu-west-1:123456789012:function:api"},
                    },
                ],
                "child_modules": [{"resources": [proxy]}],
            }
        }
    }
    assert [r.address for r in state_resources(state, "aws_db_proxy")] == ["module.db.aws_db_proxy.this"]
    (function,) = state_resources(state, "aws_lambda_function")
    assert function.region == "eu-west-1"


def test_tflocal_s_deprecation_banner_never_reaches_an_error_message() -> None:
    output = (
        "============================================================================\n"
        "  WARNING: 'tflocal' is deprecated. Use 'lstk terraform' instead.\n"
        "============================================================================\n\n"
        "  'tflocal' no longer receives updates.\n\n"
        "============================================================================\n\n"
        "Continuing with 'tflocal'...\n\n"
        "Error: Invalid value for variable\n"
    )
    assert without_tflocal_banner(output) == "Error: Invalid value for variable\n"
