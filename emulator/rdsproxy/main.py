"""`python -m emulator proxy`: the RDS Proxy emulator's process, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal

from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.listener import ProxyListener

# A file to write a cProfile of the whole run to, when set (for benchmarks: bench/README.md).
PROFILE_ENV = "LOCAL_TWIN_PROXY_PROFILE"


def run(config: ProxyConfig, ready_file: str | None = None) -> None:
    """The proxy's event loop: uvloop when it is installed (much less overhead per message)."""
    profile_to = os.environ.get(PROFILE_ENV)
    if profile_to:
        import cProfile  # noqa: PLC0415 - only when asked for

        with cProfile.Profile() as profile:
            _run(config, ready_file)
        profile.dump_stats(profile_to)
        return
    _run(config, ready_file)


def _run(config: ProxyConfig, ready_file: str | None) -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        asyncio.run(serve(config, ready_file))
    else:
        uvloop.run(serve(config, ready_file))


async def serve(config: ProxyConfig, ready_file: str | None = None) -> None:
    """Run until SIGTERM or SIGINT."""
    proxy = ProxyListener(config)
    await proxy.start()
    if ready_file:
        # Written whole and then renamed: whoever waits for the file never reads it half-written.
        partial = f"{ready_file}.partial"
        with open(partial, "w") as handle:
            json.dump({"port": config.listen_port, "stats_port": proxy.admin.port}, handle)
        os.replace(partial, ready_file)
    proxy.log.info(
        f"RDS Proxy emulator {config.name} listening on {config.listen_host}:{config.listen_port}"
        f" (stats on port {proxy.admin.port})."
    )
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
