"""The plugin's options: `up`'s options as ini keys (`twin_handler`) and command-line options
(`--twin-handler`) of the same names, as pytest-postgresql names its own.

The command line wins over the ini file: a single value replaces it, NAME=VALUE lines are merged
name by name, paths replace the ini file's. Relative paths are the ini file's directory's (the
rootdir without one) in the ini file, the current directory's on the command line. Values are
checked when pytest starts; nothing is imported or started until a test asks for a twin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

Kind = Literal["string", "int", "float", "path", "paths", "assignments", "functions"]


@dataclass(frozen=True)
class Option:
    name: str  # twin_<name> in the ini file, --twin-<name> on the command line
    kind: Kind
    help: str
    # Its name in TwinOptions (LocalTwin's keyword arguments) when that is not the same.
    plural: str = ""

    @property
    def key(self) -> str:
        return self.plural or self.name

    @property
    def ini(self) -> str:
        return f"twin_{self.name}"

    @property
    def flag(self) -> str:
        return f"--twin-{self.name.replace('_', '-')}"

    @property
    def many(self) -> bool:
        return self.kind in ("paths", "assignments", "functions")


OPTIONS = (
    Option("handler", "string", "your handler: MODULE.FUNCTION, as Lambda's Handler setting"),
    Option("code", "path", "your function's code directory, its task root (default: the ini's)"),
    Option("function_name", "string", "the handler's function name (default: local-twin-fn)"),
    Option("function", "functions", "one more function: NAME=DIR:MODULE.FUNCTION", "functions"),
    Option("env", "assignments", "a variable for every function: NAME=VALUE (${NAME}: the twin's)"),
    Option("init_sql", "paths", "your schema: a .sql file or a directory of them, run as the owner"),
    Option("terraform", "path", "a Terraform configuration to apply; the proxy and functions follow it"),
    Option("tf_var", "assignments", "a variable of that configuration: NAME=VALUE", "tf_vars"),
    Option("proxy", "string", "emulator (the default), pgbouncer or direct"),
    Option("proxy_setting", "assignments", "a proxy setting by Terraform name: NAME=VALUE", "proxy_settings"),
    Option("max_connections", "int", "PostgreSQL's max_connections (default: 20)"),
    Option("pool_size", "int", "database connections a pooler may open (default: 5)"),
    Option("timeout", "float", "the functions' timeout in seconds (default: 30)"),
    Option("memory", "int", "the functions' memory setting in MB (default: 256)"),
    Option("reserved_concurrency", "int", "at most this many environments per function"),
    Option("cluster", "string", "the database: single (the default), aurora or multi-az"),
    Option("replicas", "int", "an Aurora cluster's readable replicas (default: 1)"),
    Option("dns_ttl", "float", "seconds the database's endpoints lag a failover (default: 5)"),
)  # fmt: skip

ALLOW_PINS = "twin_allow_pins"
ALLOW_PINS_HELP = (
    "do not fail tests whose sessions RDS Proxy pinned (their pins are still shown when they fail); "
    "by default a test that pins fails unless it is marked twin_allow_pin"
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("local-twin", "the local twin of Lambda + RDS Proxy + PostgreSQL")
    for option in OPTIONS:
        if option.many:
            parser.addini(option.ini, option.help, type="linelist")
        else:
            parser.addini(option.ini, option.help, type="string")
        group.addoption(
            option.flag,
            dest=option.ini,
            action="append" if option.many else "store",
            default=None,
            metavar=option.kind.upper() if option.kind in ("path", "int", "float") else "VALUE",
            help=f"{option.help}{' (repeatable)' if option.many else ''} (ini: {option.ini})",
        )
    parser.addini(ALLOW_PINS, ALLOW_PINS_HELP, type="bool", default=False)
    group.addoption(
        "--twin-allow-pins",
        dest=ALLOW_PINS,
        action="store_true",
        default=None,
        help=f"{ALLOW_PINS_HELP} (ini: {ALLOW_PINS})",
    )


def configured(config: pytest.Config) -> dict[str, Any]:
    """The twin the ini file and the command line describe, as LocalTwin's keyword arguments."""
    ini_dir = config.inipath.parent if config.inipath is not None else config.rootpath
    here = config.invocation_params.dir
    options: dict[str, Any] = {}
    for option in OPTIONS:
        from_ini: Any = config.getini(option.ini)
        from_cli: Any = config.getoption(option.ini)
        if option.kind == "paths":
            paths = _parsed(option, from_cli or [], here) or _parsed(option, from_ini, ini_dir)
            if paths:
                options[option.key] = tuple(paths)
        elif option.many:
            pairs = dict(_parsed(option, from_ini, ini_dir) + _parsed(option, from_cli or [], here))
            if pairs:
                options[option.key] = pairs
        elif from_cli is not None or from_ini:
            base, value = (here, from_cli) if from_cli is not None else (ini_dir, from_ini)
            options[option.key] = _scalar(option, value.strip(), base)
    if "handler" in options and "code" not in options:
        # The project's directory, wherever pytest was started from.
        options["code"] = ini_dir
    return options


def allow_all_pins(config: pytest.Config) -> bool:
    from_cli = config.getoption(ALLOW_PINS)
    return bool(from_cli) if from_cli is not None else bool(config.getini(ALLOW_PINS))


def _scalar(option: Option, value: str, base: Path) -> Any:
    try:
        if option.kind == "int":
            return int(value)
        if option.kind == "float":
            return float(value)
    except ValueError:
        raise pytest.UsageError(f"{option.ini} / {option.flag}: not a number: {value!r}") from None
    if option.kind == "path":
        return base / value
    return value


def _parsed(option: Option, lines: list[str], base: Path) -> list[Any]:
    """Each non-empty line: a path, or a (NAME, VALUE) pair."""
    result: list[Any] = []
    for line in (line.strip() for line in lines):
        if not line:
            continue
        if option.kind == "paths":
            result.append(base / line)
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise pytest.UsageError(f"{option.ini} / {option.flag} takes NAME=VALUE, not {line!r}")
        if option.kind == "functions":
            directory, colon, handler = value.rpartition(":")
            if not colon or not directory:
                raise pytest.UsageError(
                    f"{option.ini} / {option.flag} takes NAME=DIR:MODULE.FUNCTION, not {line!r}"
                )
            value = f"{base / directory}:{handler}"
        result.append((name.strip(), value))
    return result
