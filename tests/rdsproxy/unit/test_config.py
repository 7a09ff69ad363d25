from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulator.rdsproxy.config import ProxyConfig

pytestmark = pytest.mark.unit


def test_defaults_are_rds_proxys() -> None:
    config = ProxyConfig()
    assert (config.connection_borrow_timeout, config.max_connections_percent, config.idle_client_timeout) == (
        120,
        100,
        1800,
    )
    # Unset max_idle_connections_percent is half of max_connections_percent (AWS: 80 -> 40).
    assert config.max_idle_connections_percent == 50
    assert ProxyConfig(max_connections_percent=80).max_idle_connections_percent == 40
    assert (config.require_tls, config.iam_auth, config.client_password_auth_type) == (
        False,
        "DISABLED",
        "POSTGRES_SCRAM_SHA_256",
    )


@pytest.mark.parametrize(
    ("max_connections", "percent", "reserved", "cap"),
    [(1000, 95, 0, 950), (20, 25, 0, 5), (87, 20, 0, 17), (30, 50, 2, 13), (10, 1, 0, 0)],
)
def test_the_pool_cap_is_floor_of_the_percentage_minus_reserved(
    max_connections: int, percent: int, reserved: int, cap: int
) -> None:
    config = ProxyConfig(max_connections_percent=percent, reserved_connections=reserved)
    assert config.pool_cap(max_connections) == cap


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_connections_percent": 0}, "max_connections_percent must be between 1 and 100"),
        ({"max_connections_percent": 50, "max_idle_connections_percent": 60}, "max_idle_connections_percent"),
        ({"iam_auth": "ENABLED"}, "iam_auth must be REQUIRED or DISABLED"),
        ({"client_password_auth_type": "MYSQL_NATIVE_PASSWORD"}, "is not for PostgreSQL"),
        ({"session_pinning_filters": ["EXCLUDE_EVERYTHING"]}, "only EXCLUDE_VARIABLE_SETS exists"),
        ({"connection_borrow_timeout": 4000}, "connection_borrow_timeout"),
    ],
)
def test_invalid_settings_are_refused_with_the_reason(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProxyConfig.from_mapping(settings)


def test_session_pinning_filters_are_accepted(tmp_path: Path) -> None:
    assert ProxyConfig(session_pinning_filters=["EXCLUDE_VARIABLE_SETS"]).session_pinning_filters == [
        "EXCLUDE_VARIABLE_SETS"
    ]


def test_unknown_settings_are_named() -> None:
    with pytest.raises(ValueError, match="unknown proxy settings: max_conections_percent"):
        ProxyConfig.from_mapping({"max_conections_percent": 5})


def test_files_and_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "proxy.toml"
    toml.write_text('require_tls = true\niam_auth = "REQUIRED"\nconnection_borrow_timeout = 5\n')
    config = ProxyConfig.from_file(toml).with_overrides(
        [
            "max_connections_percent=20",
            "debug_logging=true",
            "init_query=SET x = 1",
            "max_idle_connections_percent=none",
        ]
    )
    assert (config.require_tls, config.iam_auth, config.connection_borrow_timeout) == (True, "REQUIRED", 5)
    assert (config.max_connections_percent, config.debug_logging, config.init_query) == (
        20,
        True,
        "SET x = 1",
    )
    assert config.max_idle_connections_percent == 10
    again = tmp_path / "proxy.json"
    again.write_text(config.to_json())
    assert ProxyConfig.from_file(again) == config
    assert json.loads(config.to_json())["max_connections_percent"] == 20
    with pytest.raises(ValueError, match="not a proxy setting"):
        config.with_overrides(["nonsense=1"])


def test_without_target_instances_the_single_target_is_the_only_instance() -> None:
    config = ProxyConfig(target_name="db", target_host="10.0.0.1", target_port=6543)
    assert [(i.name, i.address) for i in config.instances()] == [("db", "10.0.0.1:6543")]


def test_target_instances_and_proxy_endpoints_are_read_from_the_command_line() -> None:
    config = ProxyConfig().with_overrides(
        [
            "target_instances=db-instance-1=127.0.0.1:45001,db-instance-2=127.0.0.1:45002",
            "proxy_endpoints=reads=READ_ONLY:0,writes=READ_WRITE:6000",
        ]
    )
    assert [(i.name, i.port) for i in config.instances()] == [
        ("db-instance-1", 45001),
        ("db-instance-2", 45002),
    ]
    assert [(e.name, e.role, e.port) for e in config.endpoints()] == [
        ("default", "READ_WRITE", 5432),
        ("reads", "READ_ONLY", 0),
        ("writes", "READ_WRITE", 6000),
    ]


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"target_instances": ["db-1"]}, "expected NAME=HOST:PORT"),
        ({"target_instances": ["db-1=127.0.0.1:x"]}, "expected NAME=HOST:PORT"),
        ({"target_instances": ["db=127.0.0.1:1", "db=127.0.0.1:2"]}, "its own name"),
        ({"proxy_endpoints": ["reads=READ:0"]}, "READ_WRITE or READ_ONLY"),
        ({"proxy_endpoints": ["default=READ_ONLY:0"]}, "default is taken"),
        ({"proxy_endpoints": ["reads"]}, "expected NAME=ROLE:PORT"),
        ({"failover_error_severity": "WARNING"}, "ERROR or FATAL"),
        ({"failover_probe_interval_ms": 0}, "between 10 and 10000"),
    ],
)
def test_replication_settings_are_checked(settings: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ProxyConfig.from_mapping(settings)
