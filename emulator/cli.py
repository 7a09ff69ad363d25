"""Command line: `python -m emulator up | invoke | failover | package | demo | proxy | report | check-sql |
stage`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import typing
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from emulator.awslambda.function import FunctionConfig, InitMode
from emulator.errors import ComponentError
from emulator.paths import LAMBDA_DIR, TERRAFORM_DIR
from emulator.stack.cluster import ClusterKind
from emulator.stack.embedded import DEFAULT_PROXY_SETTINGS, EmbeddedStack, StackConfig, env_key
from emulator.stack.envfile import PROXY_LOG_ENV, PROXY_STATS_ENV, parse_env, write_env_file
from emulator.stack.proxies import ProxyKind
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.twin.config import TwinConfig
from emulator.twin.control import (
    CONTROL_URL,
    ControlError,
    ControlServer,
    request_failover,
    running_pid,
)
from emulator.twin.local import LocalTwin
from emulator.twin.options import OptionError, TwinOptions, assignments, twin_config

# The subcommands' container: argparse._SubParsersAction, a private class.
Commands = Any
_SOURCE_THE_ENV_FILE = (
    f"source the file `up --env-file FILE` writes (set -a; . FILE; set +a): it sets {PROXY_LOG_ENV} "
    f"and {PROXY_STATS_ENV}"
)


class Shutdown(BaseException):
    """SIGTERM or SIGHUP, delivered like Ctrl+C so every `with` block tears its component down."""


def _raise_shutdown(signum: int, frame: FrameType | None) -> None:
    raise Shutdown(signal.Signals(signum).name)


def _say_while_stopping(text: str, stream: typing.TextIO) -> None:
    """Print a line on the way out. After SIGHUP from a closed terminal, writing to it fails (EIO):
    that must not cut the stop short, and what is left to print goes to /dev/null instead."""
    try:
        print(text, file=stream, flush=True)
    except OSError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; with a known command, only that command's parser is built (each one imports
    what its options need: `up` does not wait for the demo's or the stage's modules)."""
    parser = argparse.ArgumentParser(
        # The console script, or `python -m emulator`: the same commands.
        prog="rds-proxy-twin" if Path(sys.argv[0]).name == "rds-proxy-twin" else "python -m emulator",
        description="The local twin of AWS Lambda + RDS Proxy + PostgreSQL, without AWS and without Docker.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    adders = {
        "up": _add_up,
        "invoke": _add_invoke,
        "failover": _add_failover,
        "package": _add_package,
        "stage": _add_stage,
        "proxy": _add_proxy,
        "report": _add_report,
        "rotate-secret": _add_rotate_secret,
        "check-sql": _add_check_sql,
        "demo": _add_demo,
        "failover-demo": _add_failover_demo,
    }
    for name, add in adders.items():
        if command in (None, name) or command not in adders:
            add(commands)
    return parser


def _add_stage(commands: Commands) -> None:
    from emulator.stage import cli as stage_cli  # noqa: PLC0415 - only for this command

    stage_cli.add_parser(commands)


def _add_check_sql(commands: Commands) -> None:
    from emulator.tools.sqlcheck import cli as sqlcheck_cli  # noqa: PLC0415 - only for this command

    sqlcheck_cli.add_parser(commands)


def _add_up(commands: Commands) -> None:
    up = commands.add_parser(
        "up",
        help="start PostgreSQL, the AWS API emulator, a proxy and your functions (Ctrl+C stops them)",
        description="Start the embedded stack on 127.0.0.1 with your schema, Terraform and Lambda "
        "functions behind Lambda's API, print the endpoints and wait for Ctrl+C (SIGINT), SIGTERM or "
        "SIGHUP (a closed terminal; ignored under nohup), then stop every process and remove every "
        "temporary file.",
    )
    _proxy_option(up)
    up.add_argument(
        "--env-file",
        type=Path,
        metavar="FILE",
        help="once ready, write KEY=VALUE lines for other shells (removed again on exit)",
    )
    _terraform_options(up)
    _function_options(up, several=True)
    _stack_options(up)
    _database_options(up)
    _iam_options(up)


def _database_options(
    parser: argparse.ArgumentParser,
    *,
    kind: ClusterKind | None = None,
    terraform: bool = True,
    failover_command: bool = True,
) -> None:
    """--cluster (default `kind`, else the stack's: single), --replicas, --dns-ttl; `terraform`:
    whether the command has --terraform (the group's text says what it decides then);
    `failover_command`: whether `failover` can reach the command's twin (`up`'s, not `invoke`'s)."""
    defaults = StackConfig()
    if kind is None:
        text = (
            "One PostgreSQL (single), or a cluster by real streaming replication that fails over "
            f"(default: {defaults.database_kind.value})."
        )
    else:
        # failover-demo: a single instance has nothing to fail over to (refused).
        text = f"A cluster by real streaming replication that fails over (default: {kind.value})."
    if failover_command:
        text += " `rds-proxy-twin failover` fails it over."
    if terraform:
        text += " With --terraform, an applied aws_rds_cluster or multi_az = true decides instead."
    group = parser.add_argument_group("the database", text)
    group.add_argument(
        "--cluster",
        choices=[kind.value for kind in ClusterKind],
        help="aurora: a writer and --replicas readable replicas (an Aurora PostgreSQL cluster); "
        "multi-az: a writer and a standby nobody reads (a Multi-AZ DB instance); default: "
        + (kind or defaults.database_kind).value,
        default=None if kind is None else kind.value,
    )
    group.add_argument(
        "--replicas",
        type=int,
        metavar="N",
        help=f"an Aurora cluster's readable replicas (default: {defaults.replicas})",
    )
    group.add_argument(
        "--dns-ttl",
        type=float,
        metavar="SECONDS",
        help="how long after a failover the database's own endpoints (the direct path) still lead to "
        f"the old writer, as a DNS record's TTL (default: {defaults.dns_ttl_seconds:g}, Aurora's)",
    )


def _iam_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "IAM",
        "End-to-end IAM is a proxy setting: --proxy-setting default_auth_scheme=IAM_AUTH (no secret; the "
        "application's user is granted rds_iam and the proxy logs in with IAM tokens).",
    )
    group.add_argument(
        "--iam-database-auth",
        action="store_true",
        default=None,
        help="IAM database authentication on the database (iam_database_authentication_enabled): users "
        "granted rds_iam log in to its endpoints with IAM tokens over TLS, and no longer with a password",
    )


def _add_failover(commands: Commands) -> None:
    failover = commands.add_parser(
        "failover",
        help="fail a running `up --cluster` over: fence the writer, promote a replica",
        description="Ask a running `up` (started with --cluster aurora or multi-az) to fail its database "
        "over, as RDS's FailoverDBCluster or a reboot with failover: the writer is stopped (its "
        "connections drop), a replica is promoted and the others follow it; the old writer comes back "
        "as a replica. The proxy finds the new writer itself; the database's endpoints follow after "
        "the DNS TTL. Prints what was promoted and how long each step took.",
    )
    failover.add_argument(
        "--to",
        metavar="NAME",
        help="the replica to promote (default: the one that received the most WAL)",
    )
    failover.add_argument(
        "--env-file",
        type=Path,
        metavar="FILE",
        help=f"the env file `up --env-file` wrote (default: {CONTROL_URL} from the environment, "
        "as in a shell that sourced it)",
    )
    failover.add_argument("--format", choices=("text", "json"), default="text", help="default: %(default)s")


def _add_invoke(commands: Commands) -> None:
    invoke = commands.add_parser(
        "invoke",
        help="start the twin, invoke a function once, print its answer and log, stop",
        description="Start the twin as `up` does, with the same options (your schema, Terraform, "
        "functions and database), invoke one function once with an event, print its payload on stdout "
        "and its log (Lambda's START/END/REPORT lines) on stderr, and stop. Exits 1 when the "
        "invocation fails (a function error, as Lambda reports it).",
    )
    invoke.add_argument(
        "name",
        nargs="?",
        metavar="FUNCTION",
        help="the function to invoke (default: the first one the twin runs)",
    )
    event = invoke.add_mutually_exclusive_group()
    event.add_argument("--payload", default="{}", metavar="JSON", help="the event, as JSON (default: {})")
    event.add_argument("--event", type=Path, metavar="FILE", help="the event, from a JSON file")
    _proxy_option(invoke)
    _terraform_options(invoke)
    _function_options(invoke, several=True)
    _stack_options(invoke)
    _database_options(invoke, failover_command=False)
    _iam_options(invoke)


def _proxy_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--proxy",
        # Plain strings, as --cluster's: a typo is told with the choices (twin_config converts).
        choices=[kind.value for kind in ProxyKind],
        default=ProxyKind.EMULATOR.value,
        help="what sits between clients and PostgreSQL (default: %(default)s)",
    )


def _terraform_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("your Terraform")
    group.add_argument(
        "--terraform",
        type=Path,
        nargs="?",
        const=TERRAFORM_DIR,
        metavar="DIR",
        help="apply this Terraform configuration (default: the kit's example) to the AWS API emulator "
        "with plain terraform, then run the proxy with the applied aws_db_proxy's settings and every "
        "applied aws_lambda_function with the code its package uploaded, its endpoints mapped to the "
        "local ones",
    )
    group.add_argument(
        "--tf-var",
        dest="tf_vars",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable the configuration declares, for --terraform (repeatable)",
    )
    group.add_argument(
        "--tflocal",
        action="store_true",
        help="apply with tflocal (terraform-local, deprecated by its authors) instead of plain terraform",
    )


def _function_options(parser: argparse.ArgumentParser, *, several: bool, terraform: bool = True) -> None:
    applied = " (or, with --terraform, the applied functions)" if terraform else ""
    group = parser.add_argument_group(
        "your function",
        f"Without these, the twin runs the kit's example handler{applied}. A function's code directory "
        "is its task root (first on sys.path, as in Lambda); its dependencies come from that directory "
        "or from the kit's environment.",
    )
    group.add_argument(
        "--handler",
        metavar="MODULE.FUNCTION",
        help="your handler, as Lambda's Handler setting (default with --code: index.handler)",
    )
    group.add_argument(
        "--code",
        type=Path,
        metavar="DIR",
        help="your function's code directory (default with --handler: the current directory)",
    )
    if several:
        group.add_argument(
            "--function-name",
            default=FunctionConfig().name,
            metavar="NAME",
            help="the name of the --handler function (default: %(default)s)",
        )
        group.add_argument(
            "--function",
            dest="functions",
            action="append",
            default=[],
            metavar="NAME=DIR:MODULE.FUNCTION",
            help="one more function to run, by name, code directory and handler (repeatable)",
        )
    group.add_argument(
        "--env",
        dest="env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for every function (repeatable); ${NAME} in VALUE is the stack's "
        "variable, e.g. --env 'DB_HOST=${DB_PROXY_ENDPOINT}'",
    )
    defaults = FunctionConfig()
    group.add_argument(
        "--timeout",
        type=float,
        default=defaults.timeout_seconds,
        metavar="SECONDS",
        help="the functions' timeout (default: %(default)g)",
    )
    group.add_argument(
        "--memory",
        type=int,
        default=defaults.memory_mb,
        metavar="MB",
        help="the functions' memory setting, reported to the handler (default: %(default)s)",
    )
    group.add_argument(
        "--reserved-concurrency",
        type=int,
        metavar="N",
        help="at most N environments per function; beyond, TooManyRequestsException (default: none)",
    )
    group.add_argument(
        "--init-sql",
        dest="init_sql",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="your schema: a .sql file, or a directory whose .sql files run in name order, run once the "
        "database exists, as its owner (repeatable)",
    )


def _add_package(commands: Commands) -> None:
    package = commands.add_parser(
        "package",
        help="build a Lambda deployment zip (your code, or the example handler, with its requirements)",
        description="Build a deployment zip: the code directory's *.py files plus its requirements.txt "
        "installed by pip for manylinux x86_64 and the Lambda Python runtime (the example's terraform/ "
        "deploys it as variable lambda_package).",
    )
    package.add_argument(
        "--code",
        type=Path,
        default=LAMBDA_DIR,
        metavar="DIR",
        help="the function's code directory (default: the kit's example handler)",
    )
    package.add_argument(
        "--out", type=Path, default=Path("build/lambda-package.zip"), help="default: %(default)s"
    )
    package.add_argument(
        "--handler-only",
        action="store_true",
        help="package the code without its dependencies (enough for the local twin, which runs it with "
        "its own drivers)",
    )


def _add_proxy(commands: Commands) -> None:
    proxy = commands.add_parser(
        "proxy",
        help="run the RDS Proxy emulator alone, in the foreground",
        description="Run the RDS Proxy emulator with settings from a JSON or TOML file (Terraform names: "
        "connection_borrow_timeout, max_connections_percent, max_idle_connections_percent, init_query, "
        "idle_client_timeout, require_tls, iam_auth, client_password_auth_type, debug_logging, ...) and "
        "NAME=VALUE overrides. It reads the database credentials from the Secrets Manager secret "
        "secret_arn through aws_endpoint_url, with the AWS credentials of its environment.",
    )
    from emulator.rdsproxy import main as proxy_main  # noqa: PLC0415 - only for this command

    proxy_main.add_arguments(proxy)


def _add_report(commands: Commands) -> None:
    report = commands.add_parser(
        "report",
        help="summarise a run through the RDS Proxy emulator: pins by reason and digest, peaks, latency",
        description="Read the emulator's log (RDS Proxy format) and, optionally, its counters, and print the "
        "pinned sessions by reason and digest, peak client and database connections and borrow latency.",
    )
    report.add_argument(
        "--log",
        metavar="FILE",
        help=f"the emulator's log; default: ${PROXY_LOG_ENV}, which the env file of `up` sets",
    )
    report.add_argument(
        "--stats",
        metavar="URL_OR_FILE",
        help=f"its /stats URL or a saved copy of it; default, when --log is left out too: ${PROXY_STATS_ENV}",
    )
    report.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (tables, for people) or json (for scripts); default: %(default)s",
    )


def _add_rotate_secret(commands: Commands) -> None:
    rotate = commands.add_parser(
        "rotate-secret",
        help="rotate the proxy's secret of a running `up`, as Secrets Manager's single-user rotation does",
        description="Rotate the database secret of the stack a running `up --env-file FILE` started: a new "
        "password as the secret's AWSPENDING version, ALTER ROLE on the database as the secret's user, a "
        "test login, then AWSCURRENT moved to the new version. Connections already open keep working; the "
        "proxy reads the new version within its secret_refresh_seconds (the command waits for it), or at "
        "once when the database refuses the old password. FILE's PGPASSWORD becomes the new password once "
        "the proxy has read it (until then the proxy checks clients against the old one).",
    )
    rotate.add_argument(
        "--env-file", type=Path, required=True, metavar="FILE", help="the env file of the running `up`"
    )


def _rotate_secret(args: argparse.Namespace) -> int:
    from emulator.stack.rotation import Rotation, rotate_from_env_file  # noqa: PLC0415

    if not args.env_file.is_file():
        _usage_error(f"--env-file {args.env_file}: no such file (is `up --env-file` running?)")

    def told(rotation: Rotation, refresh: float) -> None:
        print(
            f"Rotated {rotation.secret_arn} (user {rotation.user}): version {rotation.version} is AWSCURRENT"
        )
        print("Database     the new password works now, and the old one no longer does", flush=True)
        if refresh > 0:
            print(
                f"RDS Proxy    waiting for the proxy to read the new version (up to {refresh} s)...",
                flush=True,
            )

    rotated = rotate_from_env_file(args.env_file, told)
    if rotated.proxy_seconds is not None:
        print(f"RDS Proxy    the proxy reads the new version after {rotated.proxy_seconds:.1f} s")
    print(f"Environment  {args.env_file}: PGPASSWORD is the new password")
    return 0


def _add_demo(commands: Commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="the connection-exhaustion demonstration: one burst directly, through the RDS Proxy "
        "emulator and through PgBouncer",
        description="Run the same burst of concurrent Lambda invocations (of the kit's example handler, "
        "or yours) directly against PostgreSQL, through the RDS Proxy emulator and through PgBouncer "
        "(when it is installed), print a table and write a PNG chart. Exits 1 when invocations fail "
        "other than by PostgreSQL refusing connections directly.",
    )
    from emulator.tools.demo import DemoConfig  # noqa: PLC0415 - only for this command

    defaults = DemoConfig()
    demo.add_argument(
        "--invocations",
        type=int,
        default=defaults.invocations,
        help="concurrent invocations, each in its own execution environment (default: %(default)s)",
    )
    demo.add_argument(
        "--work-ms",
        type=int,
        default=argparse.SUPPRESS,  # absent unless given: --payload replaces what it sets
        help=f"how long each invocation holds its transaction (default: {defaults.work_ms})",
    )
    demo.add_argument(
        "--init",
        choices=typing.get_args(InitMode),
        default=defaults.init,
        help="how a cold start gets its Init: forked from one Init snapshot (as Lambda SnapStart; "
        "connections are still per environment) or every environment running Init itself, as on-demand "
        "Lambda, which costs ~0.1 s of CPU each (default: %(default)s)",
    )
    _demo_outputs(demo, chart=defaults.chart, handler_log=defaults.handler_log)
    _demo_function_options(demo)
    _stack_options(demo)


def _demo_outputs(parser: argparse.ArgumentParser, *, chart: Path, handler_log: Path) -> None:
    """Where a demonstration writes its chart and its function's log."""
    parser.add_argument("--chart", type=Path, default=chart, help="PNG to write (default: %(default)s)")
    parser.add_argument(
        "--handler-log",
        type=Path,
        default=handler_log,
        help="where the function's log goes (default: %(default)s)",
    )


def _demo_function_options(parser: argparse.ArgumentParser) -> None:
    """Your function instead of the example handler, and the event it gets."""
    parser.add_argument(
        "--payload",
        metavar="JSON",
        help='the event each invocation gets (default: {"sleep_ms": WORK_MS}, what the example handler '
        "takes)",
    )
    _function_options(parser, several=False, terraform=False)


def _add_failover_demo(commands: Commands) -> None:
    demo = commands.add_parser(
        "failover-demo",
        help="the failover demonstration: a steady load directly and through the proxy during a failover",
        description="Run the same steady load of Lambda invocations (of the kit's example handler, or "
        "yours) directly "
        "against the database's endpoint and through the RDS Proxy emulator while the database fails "
        "over; print errors, the longest interruption and the invocations that waited, and write a PNG "
        "chart over time. Exits 1 when a way never recovered or more proxied invocations failed than "
        "were in flight at the failover.",
    )
    from emulator.tools.failover_demo import FailoverDemoConfig  # noqa: PLC0415 - only for this command

    defaults = FailoverDemoConfig()
    demo.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="warm execution environments per way (default: %(default)s)",
    )
    demo.add_argument(
        "--period-ms",
        type=int,
        default=int(defaults.period * 1000),
        help="each worker invokes this often (default: %(default)s)",
    )
    demo.add_argument(
        "--work-ms",
        type=int,
        default=argparse.SUPPRESS,  # absent unless given: --payload replaces what it sets
        help=f"each invocation's work (default: {defaults.work_ms})",
    )
    demo.add_argument(
        "--before",
        type=float,
        default=defaults.before_seconds,
        help="seconds of steady load before the failover (default: %(default)s)",
    )
    demo.add_argument(
        "--after",
        type=float,
        default=defaults.after_seconds,
        help="seconds of load after the database endpoint switched (default: %(default)s)",
    )
    _demo_outputs(demo, chart=defaults.chart, handler_log=defaults.handler_log)
    _demo_function_options(demo)
    # The case of AWS's "up to 66%"; the demo fails its cluster over itself.
    _database_options(demo, kind=ClusterKind.MULTI_AZ, terraform=False, failover_command=False)
    _stack_options(demo)


def _stack_options(parser: argparse.ArgumentParser) -> None:
    defaults = StackConfig()
    parser.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help="PostgreSQL's max_connections (default: %(default)s)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=defaults.pool_size,
        help="database connections a pooler may open: PgBouncer's pool size, and for the RDS Proxy "
        "emulator max_connections_percent to match, unless a --proxy-setting sets it (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--proxy-setting",
        dest="proxy_settings",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an RDS Proxy emulator setting by its Terraform name, e.g. connection_borrow_timeout=5 or "
        "iam_auth=DISABLED (repeatable). `python -m emulator proxy --print-config` lists every name with "
        f"the standalone proxy's default; here the defaults differ in {_stack_proxy_defaults()}, "
        "max_connections_percent (from --pool-size) and the addresses, target, secret and TLS files "
        "(the stack's)",
    )


def _stack_proxy_defaults() -> str:
    """The stack's own defaults for the emulator, as NAME=VALUE (what --print-config does not show)."""
    return ", ".join(
        f"{name}={json.dumps(value) if isinstance(value, bool) else value}"
        for name, value in DEFAULT_PROXY_SETTINGS.items()
    )


def _assignments(option: str, values: Sequence[str], shape: str = "NAME=VALUE") -> dict[str, str]:
    try:
        return assignments(option, values, shape)
    except OptionError as exc:
        _usage_error(str(exc))


def _usage_error(message: str) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _twin_options(args: argparse.Namespace) -> TwinOptions:
    """The twin the command's options describe, by the names LocalTwin and the pytest plugin use."""
    options: TwinOptions = {
        "proxy": getattr(args, "proxy", ProxyKind.EMULATOR),
        "max_connections": args.max_connections,
        "pool_size": args.pool_size,
        "proxy_settings": _assignments("--proxy-setting", args.proxy_settings),
        "init_sql": tuple(args.init_sql),
        "env": _assignments("--env", args.env),
        "timeout": args.timeout,
        "memory": args.memory,
        "reserved_concurrency": args.reserved_concurrency,
    }
    if args.handler:
        options["handler"] = args.handler
    if args.code:
        options["code"] = args.code
    if getattr(args, "function_name", None):
        options["function_name"] = args.function_name
    functions = getattr(args, "functions", [])
    if functions:
        options["functions"] = _assignments("--function", functions, "NAME=DIR:MODULE.FUNCTION")
    if getattr(args, "terraform", None) is not None:
        options["terraform"] = args.terraform
        options["tflocal"] = args.tflocal
    tf_vars = getattr(args, "tf_vars", [])
    if tf_vars:
        options["tf_vars"] = _assignments("--tf-var", tf_vars)
    if getattr(args, "iam_database_auth", None):
        options["iam_database_authentication"] = True
    for option, name in (("cluster", "cluster"), ("replicas", "replicas"), ("dns_ttl", "dns_ttl")):
        value = getattr(args, option, None)
        if value is not None:
            options[name] = value  # type: ignore[literal-required]
    return options


def _twin_config(args: argparse.Namespace) -> TwinConfig:
    try:
        return twin_config(_twin_options(args))
    except OptionError as exc:
        _usage_error(str(exc))


def _starting(twin: LocalTwin, args: argparse.Namespace) -> str:
    """The line a command prints while its stack starts; an apply is long and says so."""
    line = f"Starting the local stack (proxy: {twin.config.proxy})"
    if getattr(args, "terraform", None) is not None:
        # Most of it is the AWS provider polling each resource until it is ready.
        line += f" and applying {args.terraform} with Terraform: this takes a minute or two"
    return line + " ..."


def _local_twin(options: TwinOptions) -> LocalTwin:
    """The twin, checked before anything starts (a usage error exits 2)."""
    try:
        return LocalTwin(**options)
    except OptionError as exc:
        _usage_error(str(exc))


def _print_twin(twin: LocalTwin, env: Mapping[str, str]) -> None:
    stack = twin.stack
    config = stack.config
    endpoint = stack.database_endpoint
    # Clients reach the database at its endpoints (PGHOST/PGPORT); the servers' own ports are the
    # kit's business (with IAM database authentication they reject IAM users).
    about = (
        f"{stack.postgres.binaries.version}, from {stack.postgres.binaries.source}, "
        f"max_connections={config.max_connections}, database {config.database}, user {config.db_user}"
    )
    if endpoint is None:
        print(f"PostgreSQL   {env['PGHOST']}:{env['PGPORT']}  ({about})")
    else:
        print(f"PostgreSQL   {about}")  # no address of its own: the Database line's endpoints
    cluster = stack.cluster
    if cluster is not None:
        roles = ", ".join(f"{instance.name} {instance.role}" for instance in cluster.instances)
        print(f"Database     {config.database_kind}: {roles}")
    elif endpoint is not None:
        # One instance behind its endpoints (IAM database authentication): named as a cluster's are.
        writers = ", ".join(f"{name} writer" for name in endpoint.instance_ports)
        print(f"Database     {config.database_kind}: {writers}")
    if endpoint is not None:
        ttl = f"; DNS TTL {config.dns_ttl_seconds:g} s after a failover" if cluster is not None else ""
        print(f"  writer     {env['PGHOST']}:{env['PGPORT']}  (PGHOST, PGPORT{ttl})")
        if "DB_READER_PORT" in env:
            print(
                f"  reader     {env['DB_READER_HOST']}:{env['DB_READER_PORT']}  "
                "(DB_READER_HOST, DB_READER_PORT)"
            )
        for name, port in endpoint.instance_ports.items():
            key = f"DB_INSTANCE_{env_key(name)}"
            print(f"  instance   {name} {endpoint.host}:{port}  ({key}_HOST/_PORT)")
    print(
        f"Proxy        {env['DB_PROXY_ENDPOINT']}:{env['DB_PORT']}  ({stack.proxy.kind}, handler auth "
        f"{env['DB_AUTH']})"
    )
    if isinstance(stack.proxy, RdsProxyEmulator):
        for name, found in stack.proxy.endpoints().items():
            key = f"PROXY_ENDPOINT_{env_key(name)}"
            print(
                f"  endpoint   {name} {found.get('role', 'READ_WRITE')} {stack.proxy.host}:{found['port']}  "
                f"({key}_HOST/_PORT)"
            )
    print(f"AWS API      {env['AWS_ENDPOINT_URL']}  (region {env['AWS_REGION']})")
    if stack.applied is not None:
        applied = stack.applied
        names = ", ".join(function.name for function in applied.functions) or "none"
        print(
            f"Terraform    applied proxy {applied.proxy.name} ({applied.proxy.endpoint}: mapped to the "
            f"local proxy) and functions: {names}"
        )
    if stack.end_to_end_iam:
        print("DB secret    none: end-to-end IAM (default_auth_scheme IAM_AUTH)")
    else:
        print(f"DB secret    {env['DB_SECRET_ARN']}")
    _print_iam(stack, env)
    print(f"Lambda API   {twin.invoke_api.endpoint_url}  (AWS_ENDPOINT_URL_LAMBDA)")
    for function in twin.function_configs:
        print(
            f"  function   {function.name}: {function.handler} from {function.code_dir} "
            f"(concurrency {function.concurrency_limit}, timeout {function.timeout_seconds:g} s)"
        )
    print(f"TLS CA       {env['DB_SSLROOTCERT']}")
    if isinstance(stack.proxy, RdsProxyEmulator):
        cfg = stack.proxy.config
        print(
            f"RDS Proxy    iam_auth={cfg.iam_auth} require_tls={cfg.require_tls} "
            f"max_connections_percent={cfg.max_connections_percent} "
            f"connection_borrow_timeout={cfg.connection_borrow_timeout} log {stack.proxy.log_path}"
        )


def _print_iam(stack: EmbeddedStack, env: Mapping[str, str]) -> None:
    """Whether IAM database authentication and end-to-end IAM are on, and how to log in then."""
    if stack.end_to_end_iam:
        print(
            f"IAM          end-to-end IAM on: {stack.config.db_user} is in rds_iam and has no password; "
            "log in with an IAM token as PGPASSWORD, e.g."
        )
        print(
            "               PGPASSWORD=$(aws rds generate-db-auth-token --hostname $PGHOST --port $PGPORT "
            "--username $PGUSER) psql"
        )
    elif stack.iam_database_authentication:
        print(
            "IAM          IAM database authentication on: users granted rds_iam log in with IAM tokens "
            f"(TLS); {stack.config.db_user} may GRANT rds_iam"
        )
    else:
        print("IAM          IAM database authentication off")


def _up(args: argparse.Namespace) -> int:
    if args.env_file and (owner := _running_owner(args.env_file)) is not None:
        # Refused rather than replaced: the running stack would lose the file its shells, `failover`
        # and `rotate` read, and a second stack on the same file is nearly always a forgotten one.
        print(
            f"error: --env-file {args.env_file} belongs to an `up` that is still running (pid {owner}); "
            "stop it first (Ctrl+C in its terminal) or give this one another --env-file",
            file=sys.stderr,
        )
        return 2
    twin = _local_twin(_twin_options(args))
    print(_starting(twin, args), flush=True)
    with twin:
        control = ControlServer(twin)
        control.start()
        env = {**twin.environment(), CONTROL_URL: control.url}
        _print_twin(twin, env)
        try:
            if args.env_file:
                write_env_file(args.env_file, env)
                print(f"Environment  {args.env_file}  (use: set -a; . {args.env_file}; set +a)")
                if twin.stack.cluster is not None:
                    print(f"Failover     rds-proxy-twin failover --env-file {args.env_file}")
            print("Ready. Press Ctrl+C to stop.", flush=True)
            threading.Event().wait()
        finally:
            control.stop()
            if args.env_file:
                _remove_own_env_file(args.env_file, control.url)
            _say_while_stopping("Stopping ...", sys.stdout)
    return 0


def _running_owner(env_file: Path) -> int | None:
    """The pid of the running `up` that wrote env_file (None: no file, or its stack is gone)."""
    try:
        url = parse_env(env_file.read_text()).get(CONTROL_URL, "")
    except (OSError, ValueError):
        return None
    return running_pid(url) if url else None


def _remove_own_env_file(env_file: Path, control_url: str) -> None:
    """Remove env_file if it still describes this stack: its control URL (a random token) is this
    `up`'s. Not its whole content: `rotate` rewrites PGPASSWORD in it, and the file is still ours."""
    try:
        if parse_env(env_file.read_text()).get(CONTROL_URL) != control_url:
            return
    except (OSError, ValueError):
        return
    env_file.unlink(missing_ok=True)


def _failover(args: argparse.Namespace) -> int:
    if args.env_file is not None:
        try:
            url = parse_env(args.env_file.read_text()).get(CONTROL_URL, "")
        except OSError as exc:
            print(f"error: --env-file {args.env_file}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        where = f"--env-file {args.env_file}"
    else:
        url, where = os.environ.get(CONTROL_URL, ""), f"the environment's {CONTROL_URL}"
    if not url:
        print(
            f"error: {where} names no running twin ({CONTROL_URL} is missing)",
            file=sys.stderr,
        )
        print("  start one with: rds-proxy-twin up --cluster aurora --env-file FILE", file=sys.stderr)
        return 2
    try:
        report = request_failover(url, args.to)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print(
        f"Failed over: {report.old_writer} -> {report.new_writer} (topology generation {report.generation})"
    )
    print(f"  fence     {report.fence_seconds * 1000:8.1f} ms  the old writer stopped, its connections gone")
    print(f"  promote   {report.promote_seconds * 1000:8.1f} ms  {report.new_writer} accepts writes")
    others = ", ".join(report.repointed) or "none"
    print(f"  repoint   {report.repoint_seconds * 1000:8.1f} ms  replicas following it: {others}")
    print(f"  total     {report.total_seconds * 1000:8.1f} ms")
    print(f"  {report.old_writer}: {report.old_writer_fate}")
    return 0


def _invoke(args: argparse.Namespace) -> int:
    try:
        event = json.loads(args.event.read_text() if args.event else args.payload)
    except (OSError, ValueError) as exc:
        _usage_error(f"the event is not JSON: {exc}")
    # The function's log goes to stderr after the invocation, with Lambda's lines around it.
    twin = _local_twin({**_twin_options(args), "function_log": os.devnull})
    print(_starting(twin, args), file=sys.stderr, flush=True)
    with twin:
        invocation = twin.invoke(args.name or twin.function_configs[0].name, event)
    sys.stderr.write(invocation.log.decode(errors="replace"))
    print(invocation.payload.decode(errors="replace"))
    if invocation.function_error:
        print(f"FunctionError: {invocation.function_error}", file=sys.stderr)
        return 1
    return 0


def _package(args: argparse.Namespace) -> int:
    if not args.code.is_dir():
        _usage_error(f"--code {args.code}: no such directory")
    from emulator.awslambda.package import build_package, drivers_left_out  # noqa: PLC0415 - only here

    out = build_package(args.out, source=args.code, with_dependencies=not args.handler_only)
    print(f"{out} ({out.stat().st_size / 1024:.1f} KiB)")
    left_out = drivers_left_out(out, args.code)
    if left_out:
        # The twin runs this package (it gives every handler its own drivers); Lambda would not.
        names = " and ".join(left_out)
        them = "it" if len(left_out) == 1 else "them"
        why = f"--handler-only leaves {them} out"
        if not args.handler_only:
            why = f"no requirements.txt names {them}"
        print(
            f"warning: the code imports {names}, which the package does not hold ({why}): the twin runs "
            f"the package with the kit's own drivers, Lambda's Python runtime fails to import {them} "
            f"(Runtime.ImportModuleError). Fine for the twin; for AWS, list {them} in requirements.txt "
            "(e.g. psycopg2-binary, psycopg[binary]) and package without --handler-only.",
            file=sys.stderr,
        )
    return 0


def _demo_function(args: argparse.Namespace) -> tuple[TwinConfig, FunctionConfig | None, Any]:
    """A demonstration's twin, its function (yours, or None for the kit's example, which still gets
    your --env) and the event each invocation gets (None: the demonstration's own)."""
    try:
        payload = None if args.payload is None else json.loads(args.payload)
    except ValueError as exc:
        _usage_error(f"--payload is not JSON: {exc}")
    if payload is not None and hasattr(args, "work_ms"):
        _usage_error(
            '--work-ms makes the example\'s event ({"sleep_ms": N}) and --payload gives the whole '
            "event: use one or the other"
        )
    twin = _twin_config(args)
    environment = twin.environment
    function = twin.functions[0] if twin.functions else None
    if function is not None:
        function = replace(function, environment={**function.environment, **environment})
    elif environment:
        function = FunctionConfig(environment=environment, timeout_seconds=60)
    return twin, function, payload


def _demo(args: argparse.Namespace) -> int:
    from emulator.tools.demo import DemoConfig, run_demo  # noqa: PLC0415 - only for this command

    twin, function, payload = _demo_function(args)
    ways = run_demo(
        DemoConfig(
            invocations=args.invocations,
            work_ms=getattr(args, "work_ms", DemoConfig.work_ms),
            init=args.init,
            chart=args.chart,
            handler_log=args.handler_log,
            stack=twin.stack,
            function=function,
            payload=payload,
        )
    )
    unexpected = {way.name: way.unexpected_failures for way in ways if way.unexpected_failures}
    if unexpected:
        for name, errors in unexpected.items():
            print(f"error: {name}: {errors.total()} invocation(s) failed unexpectedly", file=sys.stderr)
        print(f"  their log: {args.handler_log.resolve()}", file=sys.stderr)
        return 1
    return 0


def _failover_demo(args: argparse.Namespace) -> int:
    from emulator.tools.failover_demo import (  # noqa: PLC0415 - only for this command
        FailoverDemoConfig,
        run_failover_demo,
    )
    from emulator.tools.failover_demo import failure as failover_failure  # noqa: PLC0415

    if args.cluster == ClusterKind.SINGLE.value:
        _usage_error("a failover needs a cluster: --cluster multi-az or aurora")
    for name in ("workers", "period_ms", "work_ms"):
        if getattr(args, name, 1) < 1:
            _usage_error(f"--{name.replace('_', '-')} must be at least 1")
    twin, function, payload = _demo_function(args)
    config = FailoverDemoConfig(
        workers=args.workers,
        period=args.period_ms / 1000,
        work_ms=getattr(args, "work_ms", FailoverDemoConfig.work_ms),
        before_seconds=args.before,
        after_seconds=args.after,
        chart=args.chart,
        handler_log=args.handler_log,
        stack=twin.stack,
        function=function,
        payload=payload,
    )
    ways = run_failover_demo(config)
    failed = failover_failure(ways, config)
    if failed is not None:
        print(f"error: {failed}; the function's log: {args.handler_log.resolve()}", file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from emulator.tools.consoles import console as output_console  # noqa: PLC0415
    from emulator.tools.report import RunReport, read_log, read_stats  # noqa: PLC0415

    log, stats_at = args.log, args.stats
    if log is None:
        # The env file of `up`, sourced: its run's log, and its counters unless others are named.
        log, stats_at = os.environ.get(PROXY_LOG_ENV), stats_at or os.environ.get(PROXY_STATS_ENV)
        if not log:
            print(f"error: no log to read: give --log FILE, or {_SOURCE_THE_ENV_FILE}", file=sys.stderr)
            return 2
    elif not log:
        # --log "$LOCAL_TWIN_PROXY_LOG" in a shell that never sourced the file.
        print(f"error: --log is empty: {_SOURCE_THE_ENV_FILE}", file=sys.stderr)
        return 2
    source = f"--stats {stats_at}"
    try:
        stats = read_stats(stats_at) if stats_at else {}
        source = f"--log {log}"
        report = read_log(Path(log), RunReport(stats=stats))
    except (OSError, ValueError) as exc:  # a missing file, an unreachable URL, a file that is not JSON
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"error: {source}: {detail}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(report.to_json(), indent=2))
        return 0
    console = output_console()
    for part in report.parts():
        console.print(part)
    return 0


def _proxy(args: argparse.Namespace) -> int:
    from emulator.rdsproxy import main as proxy_main  # noqa: PLC0415 - only for this command

    return proxy_main.command(args)


def _check_sql(args: argparse.Namespace) -> int:
    from emulator.tools.sqlcheck import cli as sqlcheck_cli  # noqa: PLC0415 - only for this command

    return sqlcheck_cli.run(args)


def _stage(args: argparse.Namespace) -> int:
    from emulator.stage import cli as stage_cli  # noqa: PLC0415 - only for this command

    return stage_cli.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parser(arguments[0] if arguments else None).parse_args(arguments)
    # A process started in the background of a script inherits SIGINT ignored, and Python then
    # leaves it ignored: `kill -INT` would do nothing. Both signals stop the kit however it started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_shutdown)
    # A closed terminal or a dropped SSH session (SIGHUP) stops it as SIGTERM does, with its files
    # removed; unless SIGHUP is ignored (nohup), which asks it to outlive the terminal.
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _raise_shutdown)
    commands = {
        "up": _up,
        "invoke": _invoke,
        "failover": _failover,
        "package": _package,
        "demo": _demo,
        "failover-demo": _failover_demo,
        "proxy": _proxy,
        "report": _report,
        "rotate-secret": _rotate_secret,
        "check-sql": _check_sql,
        "stage": _stage,
    }
    try:
        return commands[args.command](args)
    except ComponentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Shutdown):
        _say_while_stopping("Stopped.", sys.stderr)
        return 0
