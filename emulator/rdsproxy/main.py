"""`python -m emulator proxy`: the RDS Proxy emulator's process, until SIGTERM or SIGINT.

The stack starts it as `python -m emulator.rdsproxy` (the same arguments), which imports only the
proxy: the whole command line would add a second to every stack's start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from emulator.rdsproxy.config import ProxyConfig

# A file to write a cProfile of the whole run to, when set (bench/run.py --profile; README: Performance).
PROFILE_ENV = "LOCAL_TWIN_PROXY_PROFILE"
# Modules setup.py compiles with mypyc when asked (LOCAL_TWIN_MYPYC=1): one of the core, one of the
# glue. setup.py builds its list as one group, so these stand for all of it.
COMPILABLE = ("emulator.rdsproxy.protocol.routing", "emulator.rdsproxy.session")


def compiled_modules() -> list[str]:
    """Which of COMPILABLE are compiled (extension modules) rather than Python source."""
    modules = [importlib.import_module(name) for name in COMPILABLE]
    return [module.__name__ for module in modules if not (module.__file__ or "").endswith(".py")]


def how_it_runs() -> str:
    """For the start-up log line: whether the per-message path is compiled."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    if len(compiled) == len(COMPILABLE):
        return "compiled with mypyc"
    return f"partly compiled: {', '.join(compiled)}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="settings file (.json or .toml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one setting, e.g. --set max_connections_percent=20 (repeatable)",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="FILE",
        help="write {port, stats_port, endpoints} as JSON here once listening",
    )
    parser.add_argument("--print-config", action="store_true", help="print the effective settings and exit")
    parser.add_argument(
        "--wait-for-config",
        type=float,
        metavar="SECONDS",
        help="wait up to SECONDS for the --config file to appear, loading the proxy meanwhile (the stack "
        "starts the process before it knows the secret)",
    )


def command(args: argparse.Namespace) -> int:
    if args.wait_for_config is not None and not _config_appears(args.config, args.wait_for_config):
        print(f"error: no configuration at {args.config} after {args.wait_for_config:g} s", file=sys.stderr)
        return 2
    try:
        config = ProxyConfig.from_file(args.config) if args.config else ProxyConfig()
        config = config.with_overrides(args.overrides)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config.to_json())
        return 0
    from emulator.rdsproxy.listener import StartFailed  # noqa: PLC0415 - not for --print-config

    try:
        run(config, str(args.ready_file) if args.ready_file else None)
    except StartFailed as exc:
        # The process is the component: its name would only repeat the command's.
        print(f"error: {exc.problem}\n  how to fix: {exc.hint}", file=sys.stderr)
        return 1
    return 0


def _config_appears(path: Path | None, timeout: float) -> bool:
    """Import what serving needs, then wait for the configuration file (written whole, renamed into
    place) to exist."""
    import emulator.rdsproxy.listener  # noqa: F401, PLC0415 - loaded while the stack still prepares

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401, PLC0415

    deadline = time.monotonic() + timeout
    while path is not None and not path.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return path is not None


def run(config: ProxyConfig, ready_file: str | None = None) -> None:
    """The proxy's event loop: uvloop when it is installed (much less overhead per message)."""
    profile_to = os.environ.get(PROFILE_ENV)
    if profile_to:
        import cProfile  # noqa: PLC0415 - only when asked for

        with cProfile.Profile() as profile:
            run_loop(serve(config, ready_file))
        profile.dump_stats(profile_to)
        return
    run_loop(serve(config, ready_file))


def run_loop(work: Coroutine[Any, Any, None]) -> None:
    """Run work in the proxy's event loop: uvloop's when it is installed, else asyncio's."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        asyncio.run(work)
    else:
        uvloop.run(work)


# Each client connection is a file descriptor; RDS Proxy takes thousands. Past this many a process
# gains nothing from a higher limit but the kernel's per-process table.
_OPEN_FILES_WANTED = 1 << 20
# Descriptors the process needs besides clients: database connections, logs, the stats endpoint.
_OPEN_FILES_SPARE = 100


def raise_open_files_limit() -> tuple[int, int]:
    """The soft limit on open files raised as far as the hard limit allows (a shell's default of 1,024
    would hold about 900 clients); the limits afterwards, (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, _OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        # When the kernel's nr_open is lower: keep what we have, the message says so.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_files_message(limits: tuple[int, int]) -> str:
    soft, hard = limits
    clients = max(soft - _OPEN_FILES_SPARE, 0)
    text = f"Open-files limit {soft} (hard limit {hard}): room for about {clients} client connections."
    if soft < 20_000:
        text += (
            " RDS Proxy holds tens of thousands; raise the hard limit to hold more"
            " (ulimit -Hn as root, LimitNOFILE= in a systemd unit, --ulimit nofile= for a container)."
        )
    return text


async def serve(config: ProxyConfig, ready_file: str | None = None) -> None:
    """Run until SIGTERM or SIGINT."""
    from emulator.rdsproxy.listener import ProxyListener  # noqa: PLC0415 - not for --print-config

    open_files = raise_open_files_limit()
    proxy = ProxyListener(config)
    await proxy.start()
    if ready_file:
        # Written whole and then renamed: whoever waits for the file never reads it half-written.
        partial = f"{ready_file}.partial"
        with open(partial, "w") as handle:
            json.dump(proxy.ready_file(), handle)
        os.replace(partial, ready_file)
    proxy.log.info(
        f"RDS Proxy emulator {config.name} listening on {config.listen_host}:{proxy.endpoints[0].port}"
        f" (stats on port {proxy.admin.port}; {how_it_runs()})."
    )
    for runtime in proxy.endpoints[1:]:
        proxy.log.info(f"Proxy endpoint {runtime.name} ({runtime.role}) listening on port {runtime.port}.")
    proxy.log.info(open_files_message(open_files))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Through the loop, not signal.signal: uvloop runs Python signal handlers only when it wakes up.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
        proxy.log.info("Shutting down.")
    finally:
        await proxy.stop()
