"""The twin's options by name, as `up` and the pytest plugin take them, turned into a TwinConfig.

One set of options for every way in: `rds-proxy-twin up --handler orders.handler --init-sql schema`,
`LocalTwin(handler="orders.handler", init_sql="schema")`, and the plugin's `twin_handler` /
`--twin-handler`. What the command line says as NAME=VALUE is a mapping here; relative paths are
resolved against the current directory when the configuration is made.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from emulator.awslambda.function import FunctionConfig
from emulator.rdsproxy.config import ProxyConfig, parse_settings
from emulator.stack.cluster import ClusterKind
from emulator.stack.embedded import DEFAULT_PROXY_SETTINGS, StackConfig, TerraformSettings
from emulator.stack.proxies import ProxyKind
from emulator.stack.schema import sql_files
from emulator.twin.config import TwinConfig

StrPath = str | os.PathLike[str]
Choice = TypeVar("Choice", bound=enum.StrEnum)
Number = TypeVar("Number", int, float)


class TwinOptions(TypedDict, total=False):
    """Every option is optional; the defaults are `up`'s (shown in `rds-proxy-twin up --help`)."""

    # Your function: its handler (MODULE.FUNCTION, default with `code`: index.handler), its code
    # directory (Lambda's task root; default with `handler`: the current directory) and its name.
    handler: str
    code: StrPath
    function_name: str
    # More functions by name: NAME -> "DIR:MODULE.FUNCTION" (up's --function NAME=DIR:MODULE.FUNCTION).
    functions: Mapping[str, str]
    # Variables for every function; ${NAME} in a value is the stack's variable (DB_PROXY_ENDPOINT, ...).
    env: Mapping[str, str]
    # Your schema: .sql files, or directories of them run in name order, as the database's owner.
    init_sql: StrPath | Sequence[StrPath]
    # Your Terraform configuration, applied to the local AWS API; tf_vars are its -var values.
    terraform: StrPath
    tf_vars: Mapping[str, str]
    tflocal: bool
    # "emulator" (the RDS Proxy emulator), "pgbouncer" or "direct".
    proxy: str
    # RDS Proxy settings by their Terraform names (connection_borrow_timeout, max_connections_percent,
    # init_query, ...); values may be typed or strings as on the command line ("5", "true").
    proxy_settings: Mapping[str, Any]
    max_connections: int
    pool_size: int
    # The database: "single" (the default), "aurora" (a writer and `replicas` readable replicas) or
    # "multi-az" (a writer and one standby nobody reads); dns_ttl is how long after a failover the
    # database's own endpoints still lead to the old writer (seconds, default 5: Aurora's TTL).
    cluster: str
    replicas: int
    dns_ttl: float
    # IAM database authentication (iam_database_authentication_enabled): users granted rds_iam log in
    # to the database's endpoints with IAM tokens (emulator/dbendpoint/iamgate.py).
    iam_database_authentication: bool
    # The functions' timeout (seconds), memory setting (MB) and reserved concurrency.
    timeout: float
    memory: int
    reserved_concurrency: int | None
    # Where the functions' logs go (Init's output, START, what they print, END, REPORT): a file
    # appended to, or None for the caller's stdout (the default, as `up`).
    function_log: StrPath | None


class OptionError(ValueError):
    """An option's value cannot be right (told before anything starts)."""


def assignments(label: str, values: Iterable[str], shape: str = "NAME=VALUE") -> dict[str, str]:
    """NAME=VALUE strings (a command line's, an ini file's lines) as a mapping; the last one wins."""
    result: dict[str, str] = {}
    for assignment in values:
        name, sep, value = assignment.partition("=")
        if not sep or not name.strip():
            raise OptionError(f"{label} takes {shape}, not {assignment!r}")
        result[name.strip()] = value
    return result


def twin_config(options: TwinOptions) -> TwinConfig:
    """The twin the options describe, checked before anything starts: a handler module that is
    not there, a schema file that is missing or a setting the proxy does not know fail here."""
    known = set(TwinOptions.__annotations__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise OptionError(f"unknown twin options: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    defaults = StackConfig()
    init_sql = _paths(options.get("init_sql", ()))
    stack = StackConfig(
        proxy=_choice(options, "proxy", ProxyKind, defaults.proxy),
        max_connections=_whole(options, "max_connections", defaults.max_connections),
        pool_size=_whole(options, "pool_size", defaults.pool_size),
        proxy_settings={**DEFAULT_PROXY_SETTINGS, **proxy_settings(options.get("proxy_settings", {}))},
        terraform=_terraform(options),
        init_sql=init_sql,
        iam_database_authentication=_flag(options, "iam_database_authentication"),
        **_database(options),
    )
    sql_files(stack.init_sql)  # a missing file fails now, not after the stack started
    log = options.get("function_log")
    return TwinConfig(
        stack=stack,
        functions=_functions(options),
        environment=dict(options.get("env", {})),
        function_log=None if log is None else Path(log).resolve(),
    )


def _choice(options: Mapping[str, Any], name: str, kind: type[Choice], default: Choice) -> Choice:
    """An option that is one of an enum's values ("pgbouncer"), or the enum member itself."""
    value = options.get(name, default)
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise OptionError(f"{name} is one of {choices}, not {value!r}") from None


def _whole(options: Mapping[str, Any], name: str, default: int) -> int:
    """A whole number, or a string of one as an ini file has it ("20")."""
    value = options.get(name, default)
    number = _converted(int, value)
    # int() would round 2.5 down without a word.
    if number is None or (isinstance(value, float) and number != value):
        raise OptionError(f"{name} is a whole number, not {value!r}")
    return number


def _number(options: Mapping[str, Any], name: str, default: float) -> float:
    """A number, or a string of one ("1.5")."""
    value = options.get(name, default)
    number = _converted(float, value)
    if number is None:
        raise OptionError(f"{name} is a number, not {value!r}")
    return number


def _converted(convert: Callable[[Any], Number], value: Any) -> Number | None:
    """value as a number, or None when it is none (True is not one here, though Python counts it 1)."""
    if isinstance(value, bool):
        return None
    try:
        return convert(value)
    except (TypeError, ValueError):
        return None


def _flag(options: Mapping[str, Any], name: str) -> bool:
    """True or False: a string such as "false" would be true, so it is refused."""
    value = options.get(name, False)
    if not isinstance(value, bool):
        raise OptionError(f"{name} is True or False, not {value!r}")
    return value


def _database(options: TwinOptions) -> dict[str, Any]:
    """The database's kind, replicas and DNS TTL, checked."""
    defaults = StackConfig()
    kind = _choice(options, "cluster", ClusterKind, defaults.database_kind)
    replicas = _whole(options, "replicas", defaults.replicas)
    if "replicas" in options and kind is not ClusterKind.AURORA:
        if kind is ClusterKind.SINGLE:
            raise OptionError("replicas need a cluster: cluster='aurora' (--cluster aurora)")
        if replicas != 1:
            raise OptionError("a Multi-AZ instance has exactly one standby (replicas=1)")
    if not 1 <= replicas <= 15:
        raise OptionError(f"an Aurora cluster has 1 to 15 replicas here, not {replicas}")
    dns_ttl = _number(options, "dns_ttl", defaults.dns_ttl_seconds)
    if dns_ttl < 0:
        raise OptionError(f"dns_ttl is 0 or more seconds, not {dns_ttl:g}")
    return {"database_kind": kind, "replicas": replicas, "dns_ttl_seconds": dns_ttl}


def proxy_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings by their Terraform names; strings converted as `--proxy-setting NAME=VALUE` does."""
    known = {field.name for field in dataclasses.fields(ProxyConfig)}
    result: dict[str, Any] = {}
    for name, value in settings.items():
        if name not in known:
            raise OptionError(f"not a proxy setting: {name!r}")
        try:
            result.update(parse_settings([f"{name}={value}"]) if isinstance(value, str) else {name: value})
        except ValueError as exc:
            raise OptionError(f"proxy setting {name}: {exc}") from exc
    return result


def _paths(value: StrPath | Sequence[StrPath]) -> tuple[Path, ...]:
    # A string is a sequence too: one path, not one per character.
    items = [value] if isinstance(value, str | os.PathLike) else list(value)
    return tuple(Path(item).resolve() for item in items)


def _terraform(options: TwinOptions) -> TerraformSettings | None:
    source = options.get("terraform")
    variables = dict(options.get("tf_vars", {}))
    if source is None:
        if variables:
            raise OptionError(
                "Terraform variables (tf_vars, --tf-var) need a Terraform directory (terraform)"
            )
        return None
    directory = Path(source).resolve()
    if not directory.is_dir():
        raise OptionError(f"Terraform directory {source}: no such directory")
    # moto forgets everything when the stack stops: destroying first would only slow the stop down.
    return TerraformSettings(
        source=directory,
        variables=variables,
        destroy_on_stop=False,
        tflocal=_flag(options, "tflocal"),
    )


def _functions(options: TwinOptions) -> tuple[FunctionConfig, ...]:
    defaults = FunctionConfig()
    reserved = options.get("reserved_concurrency")
    settings: dict[str, Any] = {
        "timeout_seconds": _number(options, "timeout", defaults.timeout_seconds),
        "memory_mb": _whole(options, "memory", defaults.memory_mb),
        "reserved_concurrency": None if reserved is None else _whole(options, "reserved_concurrency", 0),
    }
    functions = []
    handler, code = options.get("handler"), options.get("code")
    if handler or code:
        functions.append(
            FunctionConfig(
                name=options.get("function_name", defaults.name),
                handler=handler or "index.handler",
                code_dir=Path(code or Path.cwd()).resolve(),
                **settings,
            )
        )
    for name, spec in options.get("functions", {}).items():
        directory, _, function_handler = spec.rpartition(":")
        if not name or not directory or not function_handler:
            raise OptionError(f"a function is NAME=DIR:MODULE.FUNCTION, not {name}={spec!r}")
        functions.append(
            FunctionConfig(
                name=name, handler=function_handler, code_dir=Path(directory).resolve(), **settings
            )
        )
    for function in functions:
        function.check()
    return tuple(functions)
