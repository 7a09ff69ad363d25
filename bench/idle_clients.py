"""One process of idle clients for bench/idle.py: logs `count` clients in through the emulator and
keeps them connected, idle, until told to stop.

Orders come as JSON lines on stdin (the setup, then {"go": true}; closing stdin means stop), events
go out as JSON lines on stdout. Several such processes share the load so that no one process needs
more open files than its limit, and their logins overlap with the proxy's work on the other core.
The PostgreSQL protocol is written out here (a startup packet, a password message, TLS after
SSLRequest) rather than taken from the emulator, so the benchmark does not move with its internals.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import ssl
import struct
import sys
import time
from collections import Counter
from typing import Any

PROTOCOL_3_0 = 196608
SSL_REQUEST = struct.pack("!II", 8, 80877103)
TERMINATE = b"X\x00\x00\x00\x04"
AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5 = 0, 3, 5


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", PROTOCOL_3_0)
    for name, value in (("user", user), ("database", database), ("application_name", "bench-idle")):
        body += name.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def password_message(secret: str) -> bytes:
    body = secret.encode() + b"\0"
    return b"p" + struct.pack("!I", len(body) + 4) + body


def md5_answer(user: str, password: str, salt: bytes) -> str:
    inner = hashlib.md5((password + user).encode()).hexdigest()  # noqa: S324 - PostgreSQL's md5 auth
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()  # noqa: S324


def error_text(body: bytes) -> str:
    fields = {part[:1]: part[1:].decode(errors="replace") for part in body.split(b"\0") if part}
    return f"{fields.get(b'C', '?')} {fields.get(b'M', '')}"


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    (length,) = struct.unpack("!I", header[1:])
    return header[:1], await reader.readexactly(length - 4)


class Clients:
    def __init__(self, setup: dict[str, Any]) -> None:
        self.setup = setup
        self.writers: list[asyncio.StreamWriter] = []
        self.errors: Counter[str] = Counter()
        self.tls: ssl.SSLContext | None = None
        if setup["tls"]:
            self.tls = ssl.create_default_context(cafile=setup["ca_file"])
        self.tokens: list[str] = []

    def make_tokens(self) -> None:
        """One IAM token per client, as each Lambda environment makes its own (before the clock starts)."""
        import boto3  # noqa: PLC0415 - only the IAM clients need it, and it takes a while to import

        aws = self.setup["aws"]
        rds = boto3.session.Session().client(
            "rds",
            region_name=aws["region"],
            aws_access_key_id=aws["access_key_id"],
            aws_secret_access_key=aws["secret_access_key"],
        )
        self.tokens = [
            rds.generate_db_auth_token(
                DBHostname=self.setup["host"], Port=self.setup["port"], DBUsername=self.setup["user"]
            )
            for _ in range(self.setup["count"])
        ]

    async def login(self, number: int) -> None:
        s = self.setup
        reader, writer = await asyncio.open_connection(s["host"], s["port"])
        try:
            await self._authenticate(reader, writer, number)
        except BaseException:
            writer.close()
            raise
        self.writers.append(writer)

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> None:
        """TLS when asked for, the startup packet, the password (or token), until ReadyForQuery."""
        s = self.setup
        if self.tls is not None:
            writer.write(SSL_REQUEST)
            answer = await reader.readexactly(1)
            if answer != b"S":
                raise ConnectionError(f"the server refused TLS ({answer!r})")
            await writer.start_tls(self.tls, server_hostname="localhost")
        writer.write(startup_packet(s["user"], s["database"]))
        while True:
            kind, body = await read_message(reader)
            if kind == b"R":
                (code,) = struct.unpack("!I", body[:4])
                if code == AUTH_MD5:
                    writer.write(password_message(md5_answer(s["user"], s["password"], body[4:8])))
                elif code == AUTH_CLEARTEXT:
                    writer.write(password_message(self.tokens[number] if self.tokens else s["password"]))
                elif code != AUTH_OK:
                    raise ConnectionError(f"unexpected authentication request {code}")
            elif kind == b"E":
                raise ConnectionError(error_text(body))
            elif kind == b"Z":
                return

    async def log_all_in(self) -> tuple[float, float]:
        semaphore = asyncio.Semaphore(self.setup["concurrency"])
        timeout = self.setup["login_timeout"]

        async def one(number: int) -> None:
            async with semaphore:
                try:
                    await asyncio.wait_for(self.login(number), timeout)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError) as exc:
                    self.errors[f"{type(exc).__name__}: {exc}"[:200]] += 1

        started = time.monotonic()
        await asyncio.gather(*(one(number) for number in range(self.setup["count"])))
        return started, time.monotonic()

    async def close_all(self) -> None:
        for writer in self.writers:
            if not writer.is_closing():
                writer.write(TERMINATE)
                writer.close()
        closing = asyncio.gather(*(writer.wait_closed() for writer in self.writers), return_exceptions=True)
        # A TLS close waits for the proxy's close_notify: bounded, the sockets go with the process anyway.
        try:
            await asyncio.wait_for(closing, 30)
        except TimeoutError:
            emit({"event": "slow_close"})


async def main() -> None:
    loop = asyncio.get_running_loop()
    setup = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    clients = Clients(setup)
    if setup["iam"]:
        clients.make_tokens()
    # This process is the load, not what is measured, and it shares the CPUs with the proxy: the
    # collector's full passes over thousands of live TLS connections would slow its logins down,
    # and what it holds is freed with the process anyway.
    gc.disable()
    emit({"event": "loaded"})
    order = await loop.run_in_executor(None, sys.stdin.readline)
    if not order.strip():
        return
    cpu = time.process_time()
    started, ended = await clients.log_all_in()
    cpu = time.process_time() - cpu
    emit(
        {
            "event": "done",
            "ok": len(clients.writers),
            "errors": dict(clients.errors.most_common(5)),
            "error_count": sum(clients.errors.values()),
            "started": started,
            "ended": ended,
            "cpu_seconds": cpu,
        }
    )
    # Idle until stdin closes (the order to stop), then log out politely.
    await loop.run_in_executor(None, sys.stdin.read)
    await clients.close_all()
    emit({"event": "closed"})


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
