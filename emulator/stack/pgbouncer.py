"""PgBouncer in transaction pooling mode: the first pooler the kit compares against."""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import psycopg

from emulator.errors import ComponentError
from emulator.net import LOOPBACK, free_port
from emulator.stack import libpq
from emulator.stack.process import ManagedProcess, ServiceUser, hand_over
from emulator.stack.tls import ServerCertificate

COMPONENT = "PgBouncer"
INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install pgbouncer; macOS: brew install pgbouncer)"


def find_pgbouncer() -> str | None:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


@dataclass(frozen=True)
class PgBouncerTarget:
    host: str
    port: int
    database: str
    user: str
    password: str


class PgBouncer:
    """One PgBouncer process pooling one database for one user.

    PgBouncer cannot check IAM tokens, so clients are trusted by user name: whatever password (or
    token) they send is not looked at. The kit's RDS Proxy emulator is what checks tokens.
    """

    kind = "pgbouncer"
    handler_auth = "iam"

    def __init__(
        self,
        workdir: Path,
        target: PgBouncerTarget,
        *,
        pool_size: int,
        user: ServiceUser | None,
        certificate: ServerCertificate | None,
        require_tls: bool = False,
        server_tls: bool = True,
    ) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise ComponentError(COMPONENT, "no pgbouncer binary on PATH", INSTALL_HINT)
        self.binary = binary
        self.workdir = workdir / "pgbouncer"
        self.target = target
        self.pool_size = pool_size
        self.user = user
        self.certificate = certificate
        self.require_tls = require_tls
        self.server_tls = server_tls
        self.host = LOOPBACK
        self.port = free_port()
        self._process: ManagedProcess | None = None

    @property
    def tls(self) -> bool:
        return self.certificate is not None

    def _write_config(self) -> Path:
        self.workdir.mkdir()
        t = self.target
        userlist = self.workdir / "userlist.txt"
        userlist.write_text(f'"{t.user}" ""\n')
        lines = [
            "[databases]",
            f"{t.database} = host={t.host} port={t.port} dbname={t.database}"
            f" user={t.user} password={t.password}",
            "",
            "[pgbouncer]",
            f"listen_addr = {self.host}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {userlist}",
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            "max_client_conn = 2000",
            # Drivers such as pg8000 and asyncpg send it; RDS Proxy accepts it too.
            "ignore_startup_parameters = extra_float_digits",
            f"admin_users = {t.user}",
            f"server_tls_sslmode = {'prefer' if self.server_tls else 'disable'}",
            "log_connections = 0",
            "log_disconnections = 0",
        ]
        if self.certificate is not None:
            lines += [
                f"client_tls_sslmode = {'require' if self.require_tls else 'allow'}",
                f"client_tls_cert_file = {self.certificate.cert_path}",
                f"client_tls_key_file = {self.certificate.key_path}",
            ]
        ini = self.workdir / "pgbouncer.ini"
        ini.write_text("\n".join(lines) + "\n")
        ini.chmod(0o600)
        hand_over(self.workdir, self.user)
        if self.certificate is not None:
            hand_over(self.certificate.key_path, self.user)
        return ini

    def start(self, timeout: float = 30) -> None:
        ini = self._write_config()
        self._process = ManagedProcess(
            COMPONENT,
            [self.binary, str(ini)],
            log_path=self.workdir / "pgbouncer.log",
            user=self.user,
            # SIGINT would wait for clients to finish; a test stack wants the immediate shutdown.
            stop_signal=signal.SIGTERM,
        )
        self._process.start()
        self._process.wait_ready(self._ready, timeout=timeout)

    def _ready(self) -> bool:
        t = self.target
        with psycopg.connect(
            **libpq.connect_kwargs(
                host=self.host, port=self.port, dbname=t.database, user=t.user, connect_timeout=2
            )
        ) as conn:
            conn.execute("SELECT 1")
        return True

    @property
    def pid(self) -> int:
        """PgBouncer's process id (for its CPU time in benchmarks)."""
        assert self._process is not None, "not started"
        return self._process.pid

    def backend_pids(self) -> set[int]:
        """From PgBouncer's admin console: SHOW SERVERS lists each server connection's remote_pid."""
        t = self.target
        with psycopg.connect(
            **libpq.connect_kwargs(
                host=self.host, port=self.port, dbname="pgbouncer", user=t.user, connect_timeout=5
            ),
            autocommit=True,
        ) as admin:
            cur = admin.cursor()
            cur.execute("SHOW SERVERS", prepare=False)
            assert cur.description is not None
            column = [c.name for c in cur.description].index("remote_pid")
            return {int(row[column]) for row in cur.fetchall()}

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
