"""Area 2, idle fan-in: many idle clients held through the emulator, with password and with TLS + IAM.

Each kind gets an emulator of its own (a clean memory baseline), warmed up by a few logins, then N
clients log in from client processes (bench/idle_clients.py) and stay idle while the proxy's resident
memory and counters are read; then they log out and the proxy must see them all go.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.machine import builds_note, emulator_build
from bench.procs import (
    REPO,
    Child,
    bench_environment,
    cpu_seconds,
    memory_kb,
    open_files_limit,
    raise_open_files_limit,
)
from bench.report import Area, Figure, Table, at_most, progress, unjudged
from emulator.errors import ReadinessTimeout
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.proxies import ProxyKind
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.wait import wait_until

# MD5 rather than RDS Proxy's default SCRAM: SCRAM's 4,096 key-derivation rounds per login would
# make the login time about hashing, and leave the memory held per client the same.
PLAIN = {"require_tls": False, "iam_auth": "DISABLED", "client_password_auth_type": "POSTGRES_MD5"}
TLS_IAM = {"require_tls": True, "iam_auth": "REQUIRED"}
# Files the proxy needs besides its clients: listeners, pool, log, stats endpoint, epoll, libraries.
FD_RESERVE = 100
CLIENTS_PER_PROCESS = 5000
WARM_UP_CLIENTS = 50
# A shell's usual soft limit: what the emulator gets when started from one.
SHELL_SOFT_LIMIT = 1024


@dataclass(frozen=True)
class Kind:
    key: str
    short: str  # a column header
    label: str
    settings: dict[str, Any]
    goal_kb: float

    @property
    def tls(self) -> bool:
        return self.settings["require_tls"] is True

    @property
    def iam(self) -> bool:
        return bool(self.settings["iam_auth"] == "REQUIRED")


KINDS = (
    Kind("plain", "plain", "password (MD5) over plain TCP", PLAIN, 8.2),
    Kind("tls_iam", "TLS+IAM", "IAM token over TLS", TLS_IAM, 16.0),
)


@dataclass
class Held:
    wanted: int
    clients: int = 0
    held: int = 0
    errors: int = 0
    first_errors: str = ""
    login_seconds: float = 0.0
    # CPU time the logins cost the proxy and the client processes: which side bounds the login rate.
    proxy_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    rss_before_kb: int = 0
    rss_held_kb: int = 0
    pss_held_kb: int | None = None
    fds_held: int = 0
    fd_limit: int = 0
    logged_out: str = ""
    build: str = ""  # the emulator's, from its start-up line

    @property
    def per_client_kb(self) -> float:
        return (self.rss_held_kb - self.rss_before_kb) / max(1, self.held)


def _setup(stack: EmbeddedStack, emulator: RdsProxyEmulator, kind: Kind, count: int) -> dict[str, Any]:
    credentials = stack.aws.credentials
    return {
        "host": emulator.host,
        "port": emulator.port,
        "user": stack.config.db_user,
        "database": stack.config.database,
        "password": stack.db_password,
        "tls": kind.tls,
        "iam": kind.iam,
        "ca_file": str(stack.ca.ca_path),
        "aws": {
            "region": credentials.region,
            "access_key_id": credentials.access_key_id,
            "secret_access_key": credentials.secret_access_key,
        },
        "count": count,
        "concurrency": 50,
        "login_timeout": 60,
    }


def _clients(emulator: RdsProxyEmulator) -> int:
    return int(emulator.stats()["client_connections"])


def _log_in(
    stack: EmbeddedStack, emulator: RdsProxyEmulator, kind: Kind, count: int, *, hold: Held | None = None
) -> list[Child]:
    """Start client processes that log `count` clients in and keep them; the results go into `hold`."""
    processes = max(1, math.ceil(count / CLIENTS_PER_PROCESS))
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    if hold is not None:
        tokens = ", each making its clients' IAM tokens" if kind.iam else ""
        progress("idle", f"{kind.short}: starting {processes} client process(es){tokens}")
    children = [Child("bench.idle_clients") for _ in shares]
    try:
        for child, share in zip(children, shares, strict=True):
            child.send(_setup(stack, emulator, kind, share))
        for child in children:
            child.event(timeout=120)  # loaded (and, for IAM, its tokens made)
        for child in children:
            child.send({"go": True})
        results = _wait_logged_in(emulator, kind, children, count, report=hold is not None)
    except BaseException:
        for child in children:
            child.stop(timeout=30)
        raise
    if hold is not None:
        _count_results(hold, results)
    return children


def _wait_logged_in(
    emulator: RdsProxyEmulator, kind: Kind, children: list[Child], count: int, *, report: bool
) -> list[dict[str, Any]]:
    """Each child's "done" event; TimeoutError when they take longer than any sane login rate."""
    limit = 60 + count * 0.02
    deadline = time.monotonic() + limit
    pending = set(children)
    results: list[dict[str, Any]] = []
    last_report = time.monotonic()
    while pending and time.monotonic() < deadline:
        for child in list(pending):
            event = child.next_event(timeout=0.5)
            if event is not None and event["event"] == "done":
                results.append(event)
                pending.discard(child)
        if report and time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            progress("idle", f"{kind.short}: {_clients(emulator):,} of {count:,} clients logged in")
    if pending:
        raise TimeoutError(f"{count:,} logins did not finish in {limit:.0f} s")
    return results


def _count_results(hold: Held, results: list[dict[str, Any]]) -> None:
    hold.held = sum(int(result["ok"]) for result in results)
    hold.errors = sum(int(result["error_count"]) for result in results)
    errors: Counter[str] = Counter()
    for result in results:
        errors.update({text: int(number) for text, number in result["errors"].items()})
    hold.first_errors = "; ".join(f"{n} x {text}" for text, n in errors.most_common(3))
    hold.client_cpu_seconds = sum(float(r["cpu_seconds"]) for r in results)
    hold.login_seconds = max(float(r["ended"]) for r in results) - min(float(r["started"]) for r in results)


def _log_out(emulator: RdsProxyEmulator, children: list[Child], timeout: float) -> str:
    for child in children:
        child.stop(timeout=timeout)
    try:
        seconds = wait_until(
            lambda: _clients(emulator) == 0,
            component="the proxy's clients (gone)",
            timeout=timeout,
            max_delay=0.5,
        )
    except ReadinessTimeout:
        return f"no: {_clients(emulator):,} left"
    return f"yes, in {seconds:.1f} s"


def hold_idle(stack: EmbeddedStack, kind: Kind, count: int) -> Held:
    hold = Held(wanted=count)
    with contextlib.ExitStack() as running:
        emulator = stack.make_emulator(kind.settings, name=f"rdsproxy-idle-{kind.key}")
        running.callback(emulator.stop)
        emulator.start()
        limit = open_files_limit(emulator.pid)
        hold.fd_limit = limit[0] if limit else 0
        hold.clients = min(count, hold.fd_limit - FD_RESERVE) if limit else count
        progress("idle", f"{kind.short}: warming up with {WARM_UP_CLIENTS} logins")
        warm = _log_in(stack, emulator, kind, min(WARM_UP_CLIENTS, hold.clients))
        _log_out(emulator, warm, timeout=30)
        hold.rss_before_kb = memory_kb(emulator.pid)[0]
        progress("idle", f"{kind.short}: logging {hold.clients:,} clients in")
        cpu = sum(cpu_seconds(emulator.pid))
        children = _log_in(stack, emulator, kind, hold.clients, hold=hold)
        hold.proxy_cpu_seconds = sum(cpu_seconds(emulator.pid)) - cpu
        hold.build = emulator_build(emulator.log_path)
        try:
            hold.rss_held_kb, hold.pss_held_kb = memory_kb(emulator.pid)
            hold.fds_held = len(os.listdir(f"/proc/{emulator.pid}/fd"))
            connected = _clients(emulator)
            if connected != hold.held:
                mismatch = f"the proxy counts {connected:,} clients, the clients {hold.held:,}"
                hold.first_errors = "; ".join(filter(None, [hold.first_errors, mismatch]))
        finally:
            hold.logged_out = _log_out(emulator, children, timeout=120)
    return hold


def fd_limit_finding(stack: EmbeddedStack) -> tuple[Figure, str]:
    """Whether the emulator raises its own open-files limit: one started with a shell's soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    probe_soft = min(soft, SHELL_SOFT_LIMIT)
    emulator = stack.make_emulator(PLAIN, name="rdsproxy-fd-probe")
    resource.setrlimit(resource.RLIMIT_NOFILE, (probe_soft, hard))
    try:
        emulator.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limit = open_files_limit(emulator.pid)
    finally:
        emulator.stop()
    measure = f"proxy's open files, started with {probe_soft}"
    if limit is None:
        return Figure(measure, "unknown", "raised"), "could not read the proxy's /proc/PID/limits"
    raised = limit[0] > probe_soft
    figure = Figure(measure, f"{limit[0]:,}", f"raised (hard {limit[1]:,})", raised)
    if raised:
        return (
            figure,
            f"the emulator raises its open-files soft limit: started with {probe_soft}, it has {limit[0]}",
        )
    return figure, (
        f"the emulator keeps the open-files soft limit it inherits: started with {probe_soft} (hard "
        f"{limit[1]}), it holds about {limit[0] - FD_RESERVE} clients. This benchmark raises its own "
        "limit, which the proxies it starts inherit"
    )


def run(count: int) -> Area:
    area = Area("idle", f"2. Idle fan-in: {count:,} idle clients through the emulator")
    soft, hard, message = raise_open_files_limit(count + FD_RESERVE)
    area.notes.append(f"this process's open-files limit: soft {soft}, hard {hard} (the proxy inherits it)")
    if message:
        area.notes.append(message)
    config = StackConfig(proxy=ProxyKind.DIRECT, max_connections=40)
    held: dict[str, Held] = {}
    with EmbeddedStack(config) as stack:
        stack.postgres.create_proxy_admin_role()
        figure, note = fd_limit_finding(stack)
        area.figures.append(figure)
        area.notes.append(note)
        for kind in KINDS:
            try:
                held[kind.key] = hold_idle(stack, kind, count)
            except (RuntimeError, TimeoutError, OSError) as exc:
                area.figures.append(Figure(f"{kind.short}: clients held", "failed", f"{count:,}", False))
                area.notes.append(f"{kind.label}: {type(exc).__name__}: {exc}")
                continue
            _report(area, kind, held[kind.key])
        if "tls_iam" in held:
            _tls_floor(area, stack, min(count, 2000))
    area.tables.append(_table(held))
    if held:
        area.notes.append(builds_note(hold.build for hold in held.values()))
    area.notes.append(
        "kB/client: (the proxy's resident memory with the clients held - after a warm-up of "
        f"{WARM_UP_CLIENTS} logins) / clients held. Clients log in from up to {CLIENTS_PER_PROCESS:,} per "
        "process, 50 at a time in each; each IAM client sends a token of its own (botocore's "
        "generate_db_auth_token with the stack's credentials), made before the clock starts"
    )
    return area


def _tls_floor(area: Area, stack: EmbeddedStack, count: int) -> None:
    """OpenSSL's own state per TLS connection (bench/tls_floor.py), beside the TLS clients' figure:
    the part of it no change in the proxy can remove."""
    certificate = stack.ca.issue_server("tls-floor", ["localhost"])
    argv = [sys.executable, "-m", "bench.tls_floor", str(certificate.cert_path), str(certificate.key_path)]
    argv += [str(stack.ca.ca_path), str(count)]
    try:
        done = subprocess.run(
            argv, cwd=REPO, env=bench_environment(), capture_output=True, text=True, timeout=120, check=True
        )
    except (subprocess.SubprocessError, OSError) as exc:
        area.notes.append(f"OpenSSL's state per TLS connection was not measured: {exc}")
        return
    floor = json.loads(done.stdout)
    area.figures.append(
        Figure("TLS: OpenSSL's own state per connection", f"{floor['kb_per_connection']:.1f} kB")
    )
    area.notes.append(
        f"OpenSSL's own state: {count:,} handshaken server-side ssl.SSLObjects in a process of their "
        f"own ({floor['openssl']}, TLS 1.3, the stack's certificate), no event loop and no proxy: the "
        "floor under the TLS clients' figure with this Python's ssl module"
    )


def _table(held: dict[str, Held]) -> Table:
    kinds = [kind for kind in KINDS if kind.key in held]
    rows: list[tuple[str, Callable[[Held], str]]] = [
        ("clients held", lambda h: f"{h.held:,} of {h.clients:,}"),
        ("login errors", lambda h: f"{h.errors:,}"),
        ("time to log all in (s)", lambda h: f"{h.login_seconds:.1f}"),
        ("logins per second", lambda h: f"{h.held / h.login_seconds:,.0f}" if h.login_seconds else "-"),
        ("proxy CPU per login (ms)", lambda h: f"{h.proxy_cpu_seconds * 1000 / max(1, h.held):.2f}"),
        ("client CPU per login (ms)", lambda h: f"{h.client_cpu_seconds * 1000 / max(1, h.held):.2f}"),
        ("proxy RSS before (MB)", lambda h: f"{h.rss_before_kb / 1024:.1f}"),
        ("proxy RSS held (MB)", lambda h: f"{h.rss_held_kb / 1024:.1f}"),
        ("proxy PSS held (MB)", lambda h: f"{h.pss_held_kb / 1024:.1f}" if h.pss_held_kb else "-"),
        ("kB per client", lambda h: f"{h.per_client_kb:.2f}"),
        ("proxy's open files", lambda h: f"{h.fds_held:,}"),
        ("proxy's open-files limit", lambda h: f"{h.fd_limit:,}"),
        ("all logged out", lambda h: h.logged_out),
    ]
    return Table(
        ["idle clients", *(kind.short for kind in kinds)],
        [[name, *(cell(held[kind.key]) for kind in kinds)] for name, cell in rows],
    )


def _report(area: Area, kind: Kind, hold: Held) -> None:
    held = f"{hold.held:,}"
    if hold.clients < hold.wanted:
        figure, why = unjudged(
            Figure(f"{kind.short}: clients held", held, f"{hold.wanted:,}"),
            f"the proxy process may open {hold.fd_limit:,} files, so {hold.clients:,} clients were "
            f"logged in instead of {hold.wanted:,}",
        )
        area.figures.append(figure)
        area.notes.append(why)
    else:
        area.figures.append(
            Figure(f"{kind.short}: clients held", held, f"{hold.wanted:,}", hold.held == hold.wanted)
        )
    area.figures.append(Figure(f"{kind.short}: login errors", f"{hold.errors:,}", "0", hold.errors == 0))
    if hold.first_errors:
        area.notes.append(f"{kind.label}: errors: {hold.first_errors}")
    area.figures.append(
        at_most(f"{kind.short}: proxy memory per client", hold.per_client_kb, kind.goal_kb, unit=" kB")
    )
    area.figures.append(Figure(f"{kind.short}: time to log all in", f"{hold.login_seconds:.1f} s"))
