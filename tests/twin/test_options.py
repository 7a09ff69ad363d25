"""`up`'s options by name make the twin's configuration, and a wrong one is told before anything starts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from emulator.errors import ComponentError
from emulator.stack.cluster import ClusterKind
from emulator.stack.proxies import ProxyKind
from emulator.twin.options import OptionError, TwinOptions, twin_config

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "function").mkdir()
    (tmp_path / "function" / "orders.py").write_text("def handler(event, context):\n    return {}\n")
    (tmp_path / "schema").mkdir()
    (tmp_path / "schema" / "001_tables.sql").write_text("CREATE TABLE orders (id int);\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_options_say_what_up_s_command_line_says(project: Path) -> None:
    config = twin_config(
        {
            "handler": "orders.handler",
            "code": "function",
            "function_name": "orders-api",
            "init_sql": "schema",
            "env": {"DB_HOST": "${DB_PROXY_ENDPOINT}"},
            "proxy_settings": {
                "connection_borrow_timeout": "5",
                "require_tls": False,
                "init_query": "SET x = 1",
            },
            "max_connections": 30,
            "pool_size": 4,
            "timeout": 12,
            "memory": 512,
            "reserved_concurrency": 7,
        }
    )
    (function,) = config.functions
    assert (function.name, function.handler, function.code_dir) == (
        "orders-api",
        "orders.handler",
        project / "function",
    )
    assert (function.timeout_seconds, function.memory_mb, function.reserved_concurrency) == (12.0, 512, 7)
    assert config.environment == {"DB_HOST": "${DB_PROXY_ENDPOINT}"}
    stack = config.stack
    assert stack.init_sql == (project / "schema",)
    assert (stack.max_connections, stack.pool_size, stack.proxy) == (30, 4, ProxyKind.EMULATOR)
    # Strings are converted as --proxy-setting converts them; the stack's defaults stay underneath.
    assert stack.proxy_settings == {
        "require_tls": False,
        "iam_auth": "REQUIRED",
        "connection_borrow_timeout": 5,
        "init_query": "SET x = 1",
    }


def test_without_options_the_twin_is_up_s_default(project: Path) -> None:
    config = twin_config({})
    assert config.functions == ()
    assert config.stack.terraform is None
    assert config.function_log is None


def test_a_handler_without_a_code_directory_is_in_the_current_one(project: Path) -> None:
    (project / "app.py").write_text("def main(event, context):\n    return 1\n")
    (function,) = twin_config({"handler": "app.main"}).functions
    assert (function.code_dir, function.name) == (project, "local-twin-fn")


def test_more_functions_by_name(project: Path) -> None:
    config = twin_config(
        {"functions": {"orders": "function:orders.handler", "again": f"{project}/function:orders.handler"}}
    )
    assert [(f.name, f.code_dir, f.handler) for f in config.functions] == [
        ("orders", project / "function", "orders.handler"),
        ("again", project / "function", "orders.handler"),
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"handler": "orders"}, "is not module.function"),
        ({"handler": "missing.handler", "code": "function"}, "no module 'missing'"),
        ({"init_sql": "nope.sql"}, "does not exist"),
    ],
)
def test_a_function_or_schema_that_cannot_be_right_is_refused_before_anything_starts(
    project: Path, options: TwinOptions, message: str
) -> None:
    with pytest.raises(ComponentError, match=message):
        twin_config(options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"proxy_settings": {"max_connection_percent": 5}}, "not a proxy setting: 'max_connection_percent'"),
        ({"proxy_settings": {"require_tls": "maybe"}}, "proxy setting require_tls: expected true or false"),
        ({"tf_vars": {"region": "eu-west-1"}}, "need a Terraform directory"),
        ({"terraform": "no-such-dir"}, "no-such-dir: no such directory"),
        ({"functions": {"orders": "orders.handler"}}, "NAME=DIR:MODULE.FUNCTION"),
        ({"handlr": "orders.handler"}, "unknown twin options: handlr"),
    ],
)
def test_an_option_that_cannot_be_right_is_an_option_error(
    project: Path, options: TwinOptions, message: str
) -> None:
    with pytest.raises(OptionError, match=message):
        twin_config(options)


def test_a_cluster_is_asked_for_by_kind_with_its_replicas_and_dns_ttl(project: Path) -> None:
    stack = twin_config({"cluster": "aurora", "replicas": 3, "dns_ttl": 1.5}).stack
    assert (stack.database_kind, stack.replicas, stack.dns_ttl_seconds) == (ClusterKind.AURORA, 3, 1.5)
    assert twin_config({"cluster": "multi-az"}).stack.database_kind is ClusterKind.MULTI_AZ
    # The default is today's one instance, with Aurora's DNS TTL for when it is a cluster.
    default = twin_config({}).stack
    assert (default.database_kind, default.dns_ttl_seconds) == (ClusterKind.SINGLE, 5.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cluster": "galera"}, "cluster is one of single, aurora, multi-az, not 'galera'"),
        ({"replicas": 2}, "replicas need a cluster"),
        ({"cluster": "multi-az", "replicas": 2}, "exactly one standby"),
        ({"cluster": "aurora", "replicas": 16}, "1 to 15 replicas"),
        ({"cluster": "aurora", "dns_ttl": -1}, "dns_ttl is 0 or more"),
    ],
)
def test_a_cluster_that_cannot_be_is_refused_before_anything_starts(
    project: Path, options: TwinOptions, message: str
) -> None:
    with pytest.raises(OptionError, match=message):
        twin_config(options)


def test_the_proxy_is_asked_for_by_kind_as_a_string_or_a_proxy_kind(project: Path) -> None:
    assert twin_config({"proxy": "pgbouncer"}).stack.proxy is ProxyKind.PGBOUNCER
    assert twin_config({"proxy": ProxyKind.DIRECT}).stack.proxy is ProxyKind.DIRECT


def test_numbers_may_be_strings_as_an_ini_file_or_the_environment_has_them(project: Path) -> None:
    options: Any = {
        "handler": "orders.handler",
        "code": "function",
        "max_connections": "30",
        "pool_size": 4.0,
        "timeout": "12.5",
        "memory": "512",
    }
    config = twin_config(options)
    assert (config.stack.max_connections, config.stack.pool_size) == (30, 4)
    (function,) = config.functions
    assert (function.timeout_seconds, function.memory_mb) == (12.5, 512)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # Told as cluster's choices are, not as "'pgbouncr' is not a valid ProxyKind".
        ({"proxy": "pgbouncr"}, "proxy is one of emulator, pgbouncer, direct, not 'pgbouncr'"),
        ({"max_connections": "x"}, "max_connections is a whole number, not 'x'"),
        ({"pool_size": 2.5}, "pool_size is a whole number, not 2.5"),
        ({"memory": "lots"}, "memory is a whole number, not 'lots'"),
        ({"reserved_concurrency": True}, "reserved_concurrency is a whole number, not True"),
        ({"timeout": "soon"}, "timeout is a number, not 'soon'"),
        ({"cluster": "aurora", "replicas": "two"}, "replicas is a whole number, not 'two'"),
        ({"cluster": "aurora", "dns_ttl": None}, "dns_ttl is a number, not None"),
        # bool("false") is True: a string is refused rather than read as yes.
        (
            {"iam_database_authentication": "false"},
            "iam_database_authentication is True or False, not 'false'",
        ),
        ({"terraform": "function", "tflocal": 1}, "tflocal is True or False, not 1"),
    ],
)
def test_a_value_of_the_wrong_kind_is_an_option_error_that_says_what_it_takes(
    project: Path, options: TwinOptions, message: str
) -> None:
    with pytest.raises(OptionError, match=f"^{re.escape(message)}$"):
        twin_config(options)
