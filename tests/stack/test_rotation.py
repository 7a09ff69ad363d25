"""Rotating the proxy's secret: clients connected throughout keep working, new database connections
use the new password, and a login with the old password is refused as RDS Proxy refuses it."""

from __future__ import annotations

import json
import signal
import ssl
from collections.abc import Iterator
from typing import Any

import pg8000.native
import psycopg
import psycopg2
import pytest

import emulator.stack.rotation as rotation_module
from emulator.cli import main as cli_main
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.envfile import parse_env, write_env_file
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.stack.rotation import (
    DatabaseAddress,
    Rotation,
    rotate_secret,
    rotate_stack_secret,
    wait_for_proxy,
)
from tests.support.inprocess import InProcessEnvironment, function_environment

# Clients log in with the secret's password (no IAM), so that the old password can be tried.
SETTINGS = {
    "require_tls": True,
    "iam_auth": "DISABLED",
    "secret_refresh_seconds": 2,
    "connection_borrow_timeout": 10,
}
WRONG_PASSWORD = "The password that was provided for the role {user} is wrong."


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with EmbeddedStack(StackConfig(max_connections=30, pool_size=5, proxy_settings=SETTINGS)) as running:
        yield running


def _emulator(stack: EmbeddedStack) -> RdsProxyEmulator:
    assert isinstance(stack.proxy, RdsProxyEmulator)
    return stack.proxy


def _rotate(stack: EmbeddedStack) -> Rotation:
    pg = stack.postgres
    rotation = rotate_secret(
        stack.aws.client("secretsmanager"),
        stack.secret_arn,
        DatabaseAddress(pg.host, pg.port, stack.config.database, "require"),
    )
    stack.db_password = rotation.password
    return rotation


def _psycopg(proxy: RdsProxyEmulator, stack: EmbeddedStack, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=proxy.host,
        port=proxy.port,
        user=stack.config.db_user,
        dbname=stack.config.database,
        password=password,
        sslmode="require",
        connect_timeout=10,
        autocommit=True,
    )


def _pg8000(proxy: RdsProxyEmulator, stack: EmbeddedStack, password: str) -> pg8000.native.Connection:
    return pg8000.native.Connection(
        stack.config.db_user,
        host=proxy.host,
        port=proxy.port,
        database=stack.config.database,
        password=password,
        ssl_context=ssl.create_default_context(cafile=str(stack.ca.ca_path)),
        timeout=10,
    )


def _backends(stack: EmbeddedStack) -> set[int]:
    with stack.postgres.admin_connection() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'",
            (stack.config.db_user,),
        ).fetchall()
    return {int(row[0]) for row in rows}


def test_rotation_keeps_connected_clients_working_and_refuses_the_old_password(stack: EmbeddedStack) -> None:
    proxy = _emulator(stack)
    old = stack.db_password
    idle = _psycopg(proxy, stack, old)
    assert idle.execute("SELECT 1").fetchone() == (1,)
    native = _pg8000(proxy, stack, old)
    # A transaction open across the whole rotation, on psycopg2.
    in_transaction = psycopg2.connect(
        host=proxy.host,
        port=proxy.port,
        user=stack.config.db_user,
        dbname=stack.config.database,
        password=old,
        sslmode="require",
    )
    cursor = in_transaction.cursor()
    cursor.execute("SELECT txid_current()")
    transaction = cursor.fetchone()
    opened_before = _backends(stack)
    failed_before = proxy.stats()["database_connections_setup_failed"]

    rotation = _rotate(stack)
    assert rotation.password != old
    assert rotation.previous_version != rotation.version
    # Readiness with a deadline (the refresh interval and a margin): the proxy's log shows the version.
    wait_for_proxy(proxy.log_path, rotation, proxy.config.secret_refresh_seconds)

    # Established client connections and the proxy's database connections carry on.
    cursor.execute("SELECT txid_current()")
    assert cursor.fetchone() == transaction  # the same transaction, on the same database connection
    in_transaction.commit()
    assert idle.execute("SELECT 2").fetchone() == (2,)
    assert native.run("SELECT 3") == [[3]]
    assert opened_before <= _backends(stack)

    # The old password is refused by the proxy in its own words (28P01).
    with pytest.raises(pg8000.native.DatabaseError) as refused:
        _pg8000(proxy, stack, old)
    fields = refused.value.args[0]
    assert fields["C"] == "28P01"
    assert fields["M"] == WRONG_PASSWORD.format(user=stack.config.db_user)

    # New database connections log in with the new secret: five transactions at once need the
    # whole pool (cap 5), more connections than existed before the rotation.
    clients = [_psycopg(proxy, stack, rotation.password) for _ in range(5)]
    try:
        for client in clients:
            client.execute("BEGIN")
            client.execute("SELECT pg_backend_pid()")
        assert len(_backends(stack) - opened_before) >= 1
        stats = proxy.stats()
        assert stats["database_connections_setup_failed"] == failed_before
    finally:
        for client in clients:
            client.close()
        idle.close()
        native.close()
        in_transaction.close()


def test_a_proxy_that_does_not_poll_reads_the_secret_when_the_database_refuses_it(
    stack: EmbeddedStack,
) -> None:
    proxy = stack.make_emulator(
        {**SETTINGS, "secret_refresh_seconds": 0, "max_connections_percent": 10}, name="rdsproxy-no-poll"
    )
    proxy.start()
    try:
        old = stack.db_password
        holder = _psycopg(proxy, stack, old)
        holder.execute("BEGIN")
        holder.execute("SELECT 1")  # holds the pool's one database connection
        failed_before = proxy.stats()["database_connections_setup_failed"]

        rotation = _rotate(stack)
        # Not polling, the proxy still checks clients against the password it read at start.
        second = _psycopg(proxy, stack, old)
        # This transaction needs a new database connection: the database refuses the old password,
        # the proxy reads the secret again and logs in with the new one.
        second.execute("BEGIN")
        assert second.execute("SELECT 1").fetchone() == (1,)
        stats = proxy.stats()
        assert stats["database_connections_setup_failed"] == failed_before + 1
        assert f"version {rotation.version}." in proxy.log_path.read_text()
        second.close()
        holder.close()

        with pytest.raises(psycopg.OperationalError, match=WRONG_PASSWORD.format(user=stack.config.db_user)):
            _psycopg(proxy, stack, old)
        _psycopg(proxy, stack, rotation.password).close()
    finally:
        proxy.stop()


@pytest.mark.usefixtures("signal_handlers_kept")
def test_rotate_secret_command_rotates_a_running_stack_through_its_env_file(
    stack: EmbeddedStack, tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "twin.env"
    write_env_file(env_file, stack.environment())
    old = stack.db_password
    # While the proxy has not read the new version, it checks clients against the old password:
    # the file keeps that one until then.
    in_file_while_waiting = _passwords_in_file_while_waiting(env_file, monkeypatch)

    assert cli_main(["rotate-secret", "--env-file", str(env_file)]) == 0

    assert in_file_while_waiting == [old]
    new = parse_env(env_file.read_text())["PGPASSWORD"]
    assert new != old
    stack.db_password = new
    out = capsys.readouterr().out
    assert "the proxy reads the new version" in out
    with psycopg.connect(
        stack.postgres.conninfo(user=stack.config.db_user, password=new, dbname="app")
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (stack.config.db_user,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(stack.postgres.conninfo(user=stack.config.db_user, password=old, dbname="app"))


def test_rotating_a_stack_waits_for_its_proxy_and_keeps_the_stacks_password_current(
    stack: EmbeddedStack,
) -> None:
    # What LocalTwin.rotate_secret() does.
    proxy = _emulator(stack)
    old = stack.db_password
    rotated = rotate_stack_secret(stack)
    assert rotated.proxy_seconds is not None
    assert stack.db_password == rotated.rotation.password != old
    assert f"version {rotated.rotation.version}." in proxy.log_path.read_text()
    _psycopg(proxy, stack, stack.db_password).close()
    with pytest.raises(psycopg.OperationalError, match=WRONG_PASSWORD.format(user=stack.config.db_user)):
        _psycopg(proxy, stack, old)


def test_after_a_rotation_the_secret_reads_as_aws_leaves_it(stack: EmbeddedStack) -> None:
    # A handler reads the secret without a stage (AWSCURRENT by default), right after the rotation.
    secrets = stack.aws.client("secretsmanager")
    rotation = _rotate(stack)
    read = secrets.get_secret_value(SecretId=stack.secret_arn)
    assert json.loads(read["SecretString"])["password"] == rotation.password
    assert read["VersionId"] == rotation.version
    stages = secrets.describe_secret(SecretId=stack.secret_arn)["VersionIdsToStages"]
    assert stages[rotation.version] == ["AWSCURRENT"]
    assert stages[rotation.previous_version] == ["AWSPREVIOUS"]
    assert not [version for version, labels in stages.items() if "AWSPENDING" in labels]
    with psycopg.connect(
        stack.postgres.conninfo(user=stack.config.db_user, password=rotation.password, dbname="app")
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_handler_keeps_its_secret_and_reads_it_again_once_the_database_refuses_it(
    stack: EmbeddedStack,
) -> None:
    """The example handler, directly (DB_AUTH=secret): Init read the secret; after a rotation its
    next connection is refused with the kept password, and its one retry reads the new one."""
    with function_environment(stack.handler_environment(stack.direct)):
        environment = InProcessEnvironment()
        try:
            first = environment.invoke({})
            assert first["ok"], first
            _rotate(stack)
            with stack.postgres.admin_connection() as conn:  # its next invocation must connect again
                conn.execute("SELECT pg_terminate_backend(%s)", (first["result"]["backend_pid"],))
            second = environment.invoke({})
            assert second["ok"], second
            assert second["environment"]["connections_opened"] == 2
        finally:
            environment.shutdown()


@pytest.fixture
def signal_handlers_kept() -> Iterator[None]:
    """The command's main() sets SIGINT's and SIGTERM's handlers for its process; pytest's gets its
    own back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_rotate_secret_with_the_env_file_of_a_stopped_twin_says_so_in_one_line(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "local-twin-gone" / "rdsproxy"
    env_file = tmp_path / "stale.env"
    write_env_file(
        env_file,
        {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "DB_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:x",
            "PGHOST": "127.0.0.1",
            "PGPORT": "9",
            "PGUSER": "app_user",
            "PGPASSWORD": "pw",
            "PGDATABASE": "app",
            "LOCAL_TWIN_PROXY_LOG": str(gone / "proxy.log"),
        },
    )

    assert cli_main(["rotate-secret", "--env-file", str(env_file)]) == 2

    error = capsys.readouterr().err
    assert f"{env_file} describes a twin that is no longer running" in error
    assert "Traceback" not in error


@pytest.mark.usefixtures("signal_handlers_kept")
def test_with_iam_required_at_the_proxy_rotate_secret_rewrites_the_env_file_at_once(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Clients of the proxy log in with IAM tokens: the file's password is only psql's, straight to
    # the database, which takes the new one at once.
    settings = {"require_tls": True, "iam_auth": "REQUIRED", "secret_refresh_seconds": 2}
    with EmbeddedStack(StackConfig(proxy_settings=settings)) as iam_stack:
        env_file = tmp_path / "twin.env"
        write_env_file(env_file, iam_stack.environment())
        old = iam_stack.db_password
        in_file_while_waiting = _passwords_in_file_while_waiting(env_file, monkeypatch)

        assert cli_main(["rotate-secret", "--env-file", str(env_file)]) == 0

        new = parse_env(env_file.read_text())["PGPASSWORD"]
        assert new != old
        assert in_file_while_waiting == [new]
        out = capsys.readouterr().out
        # Said before the wait: the database has the new password already.
        assert out.index("the new password works now") < out.index("waiting for the proxy to read")
        assert out.index("waiting for the proxy to read") < out.index("the proxy reads the new version after")


def _passwords_in_file_while_waiting(env_file: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The env file's PGPASSWORD each time rotate-secret starts waiting for the proxy."""
    seen: list[str] = []
    real_wait = rotation_module.wait_for_proxy

    def wait_for_proxy(*args: Any, **kwargs: Any) -> float:
        seen.append(parse_env(env_file.read_text())["PGPASSWORD"])
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(rotation_module, "wait_for_proxy", wait_for_proxy)
    return seen
