"""End-to-end IAM in the embedded stack: default_auth_scheme IAM_AUTH starts the database endpoint
with the IAM gate, grants the application's user rds_iam, and points the proxy at the instance
endpoint; the handler's direct path (the writer endpoint) takes IAM tokens too."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from emulator.dbendpoint.iamgate import MEMBERSHIP_SECONDS
from emulator.errors import ComponentError
from emulator.stack.cluster import ClusterKind
from emulator.stack.embedded import DEFAULT_PROXY_SETTINGS, EmbeddedStack, StackConfig, TerraformSettings
from emulator.stack.envfile import write_env_file
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.stack.rotation import rotate_stack_secret
from emulator.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    settings = {**DEFAULT_PROXY_SETTINGS, "default_auth_scheme": "IAM_AUTH"}
    with EmbeddedStack(StackConfig(proxy_settings=settings)) as running:
        yield running


def _token(stack: EmbeddedStack, host: str, port: int) -> str:
    aws = stack.aws.credentials
    rds = boto3.session.Session().client(
        "rds",
        region_name=aws.region,
        aws_access_key_id=aws.access_key_id,
        aws_secret_access_key=aws.secret_access_key,
    )
    return str(rds.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=stack.config.db_user))


def _connect(stack: EmbeddedStack, host: str, port: int, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=host,
        port=port,
        user=stack.config.db_user,
        dbname=stack.config.database,
        password=password,
        sslmode="verify-full",
        sslrootcert=str(stack.ca.ca_path),
        connect_timeout=10,
        autocommit=True,
    )


def test_the_proxy_logs_in_to_the_database_with_iam_as_the_applications_user(stack: EmbeddedStack) -> None:
    proxy = stack.proxy
    assert isinstance(proxy, RdsProxyEmulator)
    assert stack.database_endpoint is not None
    assert proxy.config.target_port in stack.database_endpoint.instance_ports.values()
    assert proxy.handler_auth == "iam"
    with _connect(stack, proxy.host, proxy.port, _token(stack, proxy.host, proxy.port)) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (stack.config.db_user,)
    assert proxy.stats()["database_connections_setup_failed"] == 0


def test_the_direct_path_takes_iam_tokens_and_no_longer_the_password(stack: EmbeddedStack) -> None:
    direct = stack.direct
    with _connect(stack, direct.host, direct.port, _token(stack, direct.host, direct.port)) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (stack.config.db_user,)
    user = stack.config.db_user
    with pytest.raises(psycopg.OperationalError, match=f'PAM authentication failed for user "{user}"'):
        _connect(stack, direct.host, direct.port, stack.db_password).close()


def test_there_is_no_secret_to_rotate(stack: EmbeddedStack) -> None:
    with pytest.raises(ComponentError, match="no secret to rotate"):
        rotate_stack_secret(stack)


def test_up_and_the_twin_take_iam_database_authentication() -> None:
    from emulator.cli import _parser, _twin_options  # noqa: PLC0415 - the command line's own mapping
    from emulator.twin.options import twin_config  # noqa: PLC0415

    args = _parser().parse_args(["up", "--iam-database-auth"])
    assert twin_config(_twin_options(args)).stack.iam_database_authentication
    assert not twin_config(_twin_options(_parser().parse_args(["up"]))).stack.iam_database_authentication


@pytest.mark.terraform
def test_an_applied_iam_database_authentication_enabled_is_followed(terraform_tools: Any) -> None:
    settings = TerraformSettings(
        variables={"name_prefix": "twin-iam", "db_iam_database_authentication": "true"}
    )
    with EmbeddedStack(StackConfig(terraform=settings)) as stack:
        assert stack.applied is not None
        assert stack.applied.database.iam_database_authentication
        assert stack.database_endpoint is not None
        user = stack.config.db_user
        direct = stack.direct
        # The application's user keeps its password until it is granted rds_iam, as on RDS.
        _connect(stack, direct.host, direct.port, stack.db_password).close()
        with stack.postgres.admin_connection() as admin:
            admin.execute(f"GRANT rds_iam TO {user}")

        def logs_in_with_a_token() -> bool:
            token = _token(stack, direct.host, direct.port)
            with _connect(stack, direct.host, direct.port, token) as conn:
                return conn.execute("SELECT session_user").fetchone() == (user,)

        # The gate remembers a user's membership for MEMBERSHIP_SECONDS.
        wait_until(logs_in_with_a_token, component="IAM gate", timeout=MEMBERSHIP_SECONDS + 5)


def test_end_to_end_iam_with_a_cluster_reaches_every_instance_and_follows_a_failover() -> None:
    settings = {
        **DEFAULT_PROXY_SETTINGS,
        "default_auth_scheme": "IAM_AUTH",
        "proxy_endpoints": ["reads=READ_ONLY:0"],
    }
    config = StackConfig(proxy_settings=settings, database_kind=ClusterKind.AURORA)
    with EmbeddedStack(config) as cluster_stack:
        proxy = cluster_stack.proxy
        endpoint = cluster_stack.database_endpoint
        assert isinstance(proxy, RdsProxyEmulator)
        assert endpoint is not None
        # The proxy dials each instance's endpoint (where the IAM gate checks its tokens), not the
        # servers' own ports, and asks each its role with a token of its own.
        assert sorted(proxy.config.target_instances) == sorted(
            f"{name}={endpoint.host}:{port}" for name, port in endpoint.instance_ports.items()
        )
        reads = proxy.endpoints()["reads"]["port"]
        writes = _connect(
            cluster_stack, proxy.host, proxy.port, _token(cluster_stack, proxy.host, proxy.port)
        )
        reader = _connect(cluster_stack, proxy.host, reads, _token(cluster_stack, proxy.host, reads))
        with writes, reader:
            assert writes.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            assert reader.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            report = cluster_stack.failover()
            # The idle client's next transaction runs on the promoted instance, logged in with IAM.
            assert writes.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            assert report.new_writer != report.old_writer
        assert proxy.stats()["target_writer"] == report.new_writer


def test_with_iam_database_authentication_the_applications_user_grants_rds_iam(tmp_path: Any) -> None:
    # As RDS's master user does: --init-sql runs as the application's user.
    init = tmp_path / "roles.sql"
    init.write_text("CREATE ROLE reporter LOGIN;\nGRANT rds_iam TO reporter;\n")
    with EmbeddedStack(StackConfig(iam_database_authentication=True, init_sql=(init,))) as stack:
        direct = stack.direct
        token = (
            boto3.session.Session()
            .client(
                "rds",
                region_name=stack.aws.credentials.region,
                aws_access_key_id=stack.aws.credentials.access_key_id,
                aws_secret_access_key=stack.aws.credentials.secret_access_key,
            )
            .generate_db_auth_token(DBHostname=direct.host, Port=direct.port, DBUsername="reporter")
        )
        with psycopg.connect(
            host=direct.host,
            port=direct.port,
            user="reporter",
            dbname=stack.config.database,
            password=token,
            sslmode="verify-full",
            sslrootcert=str(stack.ca.ca_path),
            connect_timeout=10,
        ) as reporter:
            assert reporter.execute("SELECT session_user").fetchone() == ("reporter",)
        # The application's user is not in rds_iam: it keeps its password, and may revoke too.
        with _connect(stack, direct.host, direct.port, stack.db_password) as app:
            app.execute("REVOKE rds_iam FROM reporter")
            app.execute("CREATE ROLE auditor LOGIN IN ROLE rds_iam")


def test_under_end_to_end_iam_the_env_file_has_no_password_and_names_the_instance_endpoints(
    stack: EmbeddedStack,
) -> None:
    env = stack.environment()
    # The application's user is in rds_iam: a password would only get PAM authentication failed.
    assert "PGPASSWORD" not in env
    endpoint = stack.database_endpoint
    assert endpoint is not None
    ((name, port),) = endpoint.instance_ports.items()
    key = re.sub(r"[^A-Z0-9]", "_", name.upper())
    assert (env[f"DB_INSTANCE_{key}_HOST"], env[f"DB_INSTANCE_{key}_PORT"]) == (endpoint.host, str(port))
    # The instance endpoint takes a token made for it (the server's own port rejects IAM users).
    with _connect(stack, endpoint.host, port, _token(stack, endpoint.host, port)) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (stack.config.db_user,)


@pytest.mark.usefixtures("signal_handlers_kept")
def test_rotate_secret_says_there_is_no_secret_under_end_to_end_iam(
    stack: EmbeddedStack, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from emulator.cli import main as cli_main  # noqa: PLC0415 - the command itself

    env_file = tmp_path / "twin.env"
    write_env_file(env_file, stack.environment())
    assert cli_main(["rotate-secret", "--env-file", str(env_file)]) == 2
    error = capsys.readouterr().err
    assert "there is no secret to rotate" in error
    assert "end-to-end IAM" in error
    assert "current password" not in error


def test_up_s_banner_says_end_to_end_iam_is_on_and_how_to_log_in(
    stack: EmbeddedStack, capsys: pytest.CaptureFixture[str]
) -> None:
    from emulator.cli import _print_iam  # noqa: PLC0415 - the banner's IAM lines

    _print_iam(stack, stack.environment())
    out = capsys.readouterr().out
    assert "end-to-end IAM on" in out
    assert "aws rds generate-db-auth-token --hostname $PGHOST --port $PGPORT --username $PGUSER" in out


@pytest.fixture
def signal_handlers_kept() -> Iterator[None]:
    """The command's main() sets SIGINT's and SIGTERM's handlers for its process; pytest's gets its
    own back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
