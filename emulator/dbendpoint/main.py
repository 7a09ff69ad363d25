"""`python -m emulator.dbendpoint`: the database's endpoints, until SIGTERM or SIGINT (the proxy's
house pattern: uvloop when installed, the signals through the loop, a ready file)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from emulator.dbendpoint.settings import EndpointSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", required=True, help="settings file (.json)")
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="FILE",
        help='write {"writer": port, "reader": port|null, "instances": {name: port}} here once listening',
    )


def command(args: argparse.Namespace) -> int:
    try:
        settings = EndpointSettings.from_file(args.config)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr, force=True
    )
    try:
        run(settings, str(args.ready_file) if args.ready_file else None)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run(settings: EndpointSettings, ready_file: str | None = None) -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        asyncio.run(serve(settings, ready_file))
    else:
        uvloop.run(serve(settings, ready_file))


async def serve(settings: EndpointSettings, ready_file: str | None = None) -> None:
    """Run until SIGTERM or SIGINT."""
    from emulator.dbendpoint.server import DatabaseEndpoints  # noqa: PLC0415 - not for a bad config

    endpoints = DatabaseEndpoints(settings)
    await endpoints.start(ready_file)
    log = logging.getLogger("emulator.dbendpoint")
    ports = endpoints.ports()
    log.info(
        f"Database endpoints on {settings.listen_host}: writer {ports['writer']}, reader {ports['reader']},"
        f" instances {ports['instances']}; DNS TTL {settings.dns_ttl_seconds:g} s."
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Through the loop, not signal.signal: uvloop runs Python signal handlers only when it wakes up.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
        log.info("Shutting down.")
    finally:
        await endpoints.stop()
