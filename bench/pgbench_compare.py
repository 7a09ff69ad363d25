"""Throughput and memory of the RDS Proxy emulator, beside PgBouncer and PostgreSQL itself.

Run on demand (not a test): python bench/pgbench_compare.py [--seconds 8] [--clients 1,10,50]

Everything is measured in the same run on the same machine: pgbench -S (simple protocol) directly
against PostgreSQL, through PgBouncer (transaction pooling) and through the emulator, then 1,000 idle
client connections held through the emulator and its resident memory. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.rdsproxy.auth import md5_password
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.pgbouncer import find_pgbouncer
from emulator.stack.proxies import ProxyComponent, ProxyKind
from emulator.stack.rdsproxy import RdsProxyEmulator

POOL = 20
# Plain TCP and password auth on both poolers, so the comparison is about pooling, not TLS: plain
# clients make the emulator reach the database in plain TCP (as RDS Proxy does), and PgBouncer is
# told to do the same.
EMULATOR_SETTINGS = {
    "require_tls": False,
    "iam_auth": "DISABLED",
    "client_password_auth_type": "POSTGRES_MD5",
}


def pgbench(stack: EmbeddedStack, target: ProxyComponent, clients: int, seconds: int) -> float:
    env = {
        **os.environ,
        "PGHOST": target.host,
        "PGPORT": str(target.port),
        "PGUSER": stack.config.db_user,
        "PGPASSWORD": stack.db_password,
        "PGDATABASE": stack.config.database,
        "PGSSLMODE": "disable",
    }
    done = subprocess.run(
        [
            "pgbench",
            "-n",
            "-S",
            "-M",
            "simple",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(seconds),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds * 4 + 60,
        check=True,
    )
    found = re.search(r"tps = ([\d.]+)", done.stdout)
    assert found is not None, done.stdout
    return float(found[1])


async def hold_idle_clients(proxy: RdsProxyEmulator, stack: EmbeddedStack, count: int) -> int:
    """Log `count` clients in and keep them idle; return the emulator's resident memory in kB."""
    writers = []
    semaphore = asyncio.Semaphore(100)

    async def login() -> None:
        async with semaphore:
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
            writer.write(m.startup_message({"user": stack.config.db_user, "database": stack.config.database}))
            frames = m.FrameReader()
            while True:
                frames.feed(await reader.read(65536))
                done = False
                for frame in frames.frames():
                    if frame.kind == Backend.AUTHENTICATION and m.auth_code(frame.body) == m.AUTH_MD5:
                        salt = frame.body[4:8]
                        writer.write(
                            m.password_message(md5_password(stack.config.db_user, stack.db_password, salt))
                        )
                    elif frame.kind == Backend.ERROR_RESPONSE:
                        raise RuntimeError(m.parse_message_fields(frame.body))
                    elif frame.kind == Backend.READY_FOR_QUERY:
                        done = True
                if done:
                    break
            writers.append(writer)

    await asyncio.gather(*(login() for _ in range(count)))
    rss_kb = _rss_kb(proxy.pid)
    clients = proxy.stats()["client_connections"]
    for writer in writers:
        writer.write(m.TERMINATE)
        writer.close()
    assert clients == count, f"only {clients} of {count} clients were connected"
    return rss_kb


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found is not None
    return int(found[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--idle-clients", type=int, default=1000)
    args = parser.parse_args()
    if find_pgbouncer() is None:
        print("PgBouncer is needed for the comparison: apt-get install pgbouncer", file=sys.stderr)
        return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    config = StackConfig(
        proxy=ProxyKind.EMULATOR,
        extra_proxies=(ProxyKind.PGBOUNCER,),
        max_connections=100,
        pool_size=POOL,
        proxy_settings=EMULATOR_SETTINGS,
        pgbouncer_server_tls=False,
    )
    with EmbeddedStack(config) as stack:
        proxy = stack.proxy
        assert isinstance(proxy, RdsProxyEmulator)
        pgbouncer = stack.proxies[ProxyKind.PGBOUNCER]
        env = {
            **os.environ,
            "PGHOST": stack.postgres.host,
            "PGPORT": str(stack.postgres.port),
            "PGUSER": stack.config.db_user,
            "PGPASSWORD": stack.db_password,
            "PGDATABASE": stack.config.database,
        }
        subprocess.run(["pgbench", "-i", "-s", "10", "-q"], env=env, capture_output=True, check=True)
        print(
            f"pgbench -S, simple protocol, {args.seconds} s per run, pool size {POOL}, {os.cpu_count()} cores"
        )
        print(
            f"{'clients':>8} {'direct':>10} {'PgBouncer':>10} {'emulator':>10}"
            f" {'emu/PgB':>8} {'emu/direct':>10}"
        )
        for clients in (int(c) for c in args.clients.split(",")):
            direct = pgbench(stack, stack.direct, clients, args.seconds)
            bouncer = pgbench(stack, pgbouncer, clients, args.seconds)
            emulated = pgbench(stack, proxy, clients, args.seconds)
            print(
                f"{clients:>8} {direct:>10.0f} {bouncer:>10.0f} {emulated:>10.0f} "
                f"{emulated / bouncer:>8.2f} {emulated / direct:>10.2f}",
                flush=True,
            )
        baseline = _rss_kb(proxy.pid)
        rss = asyncio.run(hold_idle_clients(proxy, stack, args.idle_clients))
        print(
            f"{args.idle_clients} idle clients held through the emulator: "
            f"resident memory {rss / 1024:.1f} MB "
            f"(before: {baseline / 1024:.1f} MB)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
