"""IAM database authentication at the database endpoint, as RDS for PostgreSQL does it: users granted
rds_iam log in with IAM tokens (over TLS) and no longer with a password; the others as before."""

from __future__ import annotations

import asyncio
import datetime
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import asyncpg
import boto3
import pg8000.native
import psycopg
import pytest
from psycopg import sql

from emulator.dbendpoint.component import DatabaseEndpoint
from emulator.dbendpoint.iamgate import SOCKET_DIRECTORY, prepare_server
from emulator.dbendpoint.settings import EndpointSettings
from emulator.net import LOOPBACK
from emulator.stack.postgres import PostgresServer, PostgresSettings, find_postgres_binaries
from emulator.stack.process import hand_over, service_user
from emulator.stack.rdsproxy import RdsProxyEmulator, emulator_config
from emulator.stack.tls import LocalCA

from .conftest import TLS_HOSTNAMES, instance, topology, write_topology

pytestmark = pytest.mark.integration

KEY = "AKIAIAMGATETESTKEY00"
SECRET = secrets.token_urlsafe(30)
REGION = "eu-west-1"
IAM_USER, PLAIN_USER = "iam_user", "plain_user"
PASSWORD = secrets.token_urlsafe(12)
DATABASE = "appdb"


@dataclass
class IamLab:
    workdir: Path
    server: PostgresServer
    endpoint: DatabaseEndpoint
    authority: LocalCA

    @property
    def ca(self) -> Path:
        return self.authority.ca_path

    @property
    def port(self) -> int:
        """The instance endpoint's port (what the proxy dials with end-to-end IAM)."""
        return self.endpoint.instance_ports["db-instance-1"]


@pytest.fixture(scope="module")
def lab() -> Iterator[IamLab]:
    workdir = Path(tempfile.mkdtemp(prefix="local-twin-iamgate-"))
    user = service_user()
    hand_over(workdir, user)
    ca = LocalCA(workdir)
    endpoint_dir = workdir / "dbendpoint"
    endpoint_dir.mkdir()
    server = PostgresServer(
        workdir,
        find_postgres_binaries(),
        PostgresSettings(max_connections=20),
        user=user,
        certificate=ca.issue_server("postgres", TLS_HOSTNAMES),
        superuser_password=secrets.token_urlsafe(12),
    )
    endpoint: DatabaseEndpoint | None = None
    try:
        server.initialize()
        lines = prepare_server(server.datadir, endpoint_dir / SOCKET_DIRECTORY, owner=user)
        server.append_settings(lines, "IAM database authentication")
        server.start()
        server.create_rds_iam_role()
        with server.admin_connection() as conn:
            for role in (IAM_USER, PLAIN_USER):
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(PASSWORD)
                    )
                )
            conn.execute(f"GRANT rds_iam TO {IAM_USER}")
            conn.execute(f"CREATE DATABASE {DATABASE}")
        topology_file = endpoint_dir / "topology.json"
        write_topology(topology_file, topology("db-instance-1", instance("db-instance-1", server, "writer")))
        certificate = ca.issue_server("dbendpoint", TLS_HOSTNAMES)
        endpoint = DatabaseEndpoint(
            endpoint_dir,
            EndpointSettings(
                topology_file=str(topology_file),
                tls_cert_file=str(certificate.cert_path),
                tls_key_file=str(certificate.key_path),
                iam_database_authentication=True,
                region=REGION,
            ),
            environment={"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET},
        )
        endpoint.start()
        yield IamLab(workdir, server, endpoint, ca)
    finally:
        if endpoint is not None:
            endpoint.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def token(user: str, port: int, *, host: str = LOOPBACK, region: str = REGION) -> str:
    rds = boto3.session.Session().client(
        "rds", region_name=region, aws_access_key_id=KEY, aws_secret_access_key=SECRET
    )
    return str(rds.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user, Region=region))


def connect(lab: IamLab, user: str, password: str, **extra: Any) -> psycopg.Connection[Any]:
    options: dict[str, Any] = {
        "host": LOOPBACK,
        "port": lab.port,
        "user": user,
        "password": password,
        "dbname": DATABASE,
        "sslmode": "verify-full",
        "sslrootcert": str(lab.ca),
        "connect_timeout": 10,
        **extra,
    }
    return psycopg.connect(**options, autocommit=True)


def refusal(lab: IamLab, user: str, password: str, **extra: Any) -> dict[str, str]:
    """The FATAL the endpoint answers, as pg8000 reports its fields (code, message)."""
    context = ssl.create_default_context(cafile=str(lab.ca))
    with pytest.raises(pg8000.native.DatabaseError) as refused:
        pg8000.native.Connection(
            user,
            host=LOOPBACK,
            port=extra.get("port", lab.port),
            database=DATABASE,
            password=password,
            ssl_context=context,
            timeout=10,
        )
    fields: dict[str, str] = refused.value.args[0]
    return fields


def pam_failed(user: str) -> dict[str, str]:
    return {"S": "FATAL", "C": "28000", "M": f'PAM authentication failed for user "{user}"'}


def test_an_rds_iam_user_logs_in_with_a_token_with_each_driver(lab: IamLab) -> None:
    with connect(lab, IAM_USER, token(IAM_USER, lab.port)) as conn:
        assert conn.pgconn.ssl_in_use
        row = conn.execute("SELECT session_user, current_database()").fetchone()
        assert row == (IAM_USER, DATABASE)
    native = pg8000.native.Connection(
        IAM_USER,
        host=LOOPBACK,
        port=lab.port,
        database=DATABASE,
        password=token(IAM_USER, lab.port),
        ssl_context=ssl.create_default_context(cafile=str(lab.ca)),
    )
    assert native.run("SELECT session_user") == [[IAM_USER]]
    native.close()

    async def with_asyncpg() -> str:
        context = ssl.create_default_context(cafile=str(lab.ca))
        conn = await asyncpg.connect(
            host=LOOPBACK,
            port=lab.port,
            user=IAM_USER,
            password=token(IAM_USER, lab.port),
            database=DATABASE,
            ssl=context,
        )
        try:
            return str(await conn.fetchval("SELECT session_user"))
        finally:
            await conn.close()

    assert asyncio.run(with_asyncpg()) == IAM_USER


def test_the_writer_endpoint_takes_tokens_signed_for_its_own_port(lab: IamLab) -> None:
    writer = lab.endpoint.writer_port
    with connect(lab, IAM_USER, token(IAM_USER, writer), port=writer) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (IAM_USER,)


def test_a_token_for_another_user_is_refused(lab: IamLab) -> None:
    fields = refusal(lab, IAM_USER, token(PLAIN_USER, lab.port))
    assert {key: fields[key] for key in "SCM"} == pam_failed(IAM_USER)


def test_an_expired_token_is_refused(lab: IamLab) -> None:
    signed = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(minutes=16)
    with mock.patch("botocore.auth.get_current_datetime", return_value=signed):
        expired = token(IAM_USER, lab.port)
    fields = refusal(lab, IAM_USER, expired)
    assert {key: fields[key] for key in "SCM"} == pam_failed(IAM_USER)


@pytest.mark.parametrize(
    "signed_for",
    [
        pytest.param({"port": 1}, id="another-port"),
        pytest.param({"host": "db.example.com"}, id="another-host"),
        pytest.param({"region": "us-east-1"}, id="another-region"),
    ],
)
def test_a_token_for_another_endpoint_is_refused(lab: IamLab, signed_for: dict[str, Any]) -> None:
    port = signed_for.pop("port", lab.port)
    fields = refusal(lab, IAM_USER, token(IAM_USER, port, **signed_for))
    assert {key: fields[key] for key in "SCM"} == pam_failed(IAM_USER)


def test_an_rds_iam_user_can_no_longer_log_in_with_a_password(lab: IamLab) -> None:
    fields = refusal(lab, IAM_USER, PASSWORD)
    assert {key: fields[key] for key in "SCM"} == pam_failed(IAM_USER)

    # Without TLS, the rejecting pg_hba.conf line's words, as RDS answers.
    async def without_tls() -> None:
        await asyncpg.connect(
            host=LOOPBACK, port=lab.port, user=IAM_USER, password=PASSWORD, database=DATABASE, ssl=False
        )

    with pytest.raises(asyncpg.PostgresError) as plain:
        asyncio.run(without_tls())
    assert plain.value.sqlstate == "28000"
    assert plain.value.args[0] == (
        f'pg_hba.conf rejects connection for host "127.0.0.1", user "{IAM_USER}", database "{DATABASE}", '
        "no encryption"
    )
    # And PostgreSQL's own port refuses it too (pg_hba.conf's reject line), whatever the password.
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection"):
        psycopg.connect(
            host=LOOPBACK, port=lab.server.port, user=IAM_USER, password=PASSWORD, dbname=DATABASE
        ).close()


def test_a_user_without_rds_iam_gets_postgresqls_password_failure_for_a_token(lab: IamLab) -> None:
    fields = refusal(lab, PLAIN_USER, token(PLAIN_USER, lab.port))
    assert fields["C"] == "28P01"
    assert fields["M"] == f'password authentication failed for user "{PLAIN_USER}"'
    # Its password still works: the gate passes it to PostgreSQL unchanged.
    with connect(lab, PLAIN_USER, PASSWORD) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (PLAIN_USER,)


def test_a_grant_of_rds_iam_takes_effect_for_new_logins(lab: IamLab) -> None:
    with lab.server.admin_connection() as admin:
        admin.execute("CREATE ROLE late_user LOGIN PASSWORD 'late-password'")
        admin.execute("GRANT rds_iam TO late_user")
    try:
        with connect(lab, "late_user", token("late_user", lab.port)) as conn:
            assert conn.execute("SELECT session_user").fetchone() == ("late_user",)
    finally:
        with lab.server.admin_connection() as admin:
            admin.execute("DROP ROLE late_user")


# -- end to end: client -> proxy (IAM) -> database endpoint (IAM) -> PostgreSQL -------------------


@pytest.fixture(scope="module")
def e2e_proxy(lab: IamLab) -> Iterator[RdsProxyEmulator]:
    """An RDS Proxy emulator with default_auth_scheme IAM_AUTH and no secret, in front of the
    database endpoint's instance endpoint (as the stack wires it)."""
    # RDS Proxy creates rdsproxyadmin on its target; the emulator monitors as it, with IAM.
    lab.server.create_proxy_admin_role()
    certificate = lab.authority.issue_server("rdsproxy", TLS_HOSTNAMES)
    config = emulator_config(
        target_host=LOOPBACK,
        target_port=lab.port,
        secret_arn="",
        aws_endpoint_url="",
        region=REGION,
        tls_cert_file=str(certificate.cert_path),
        tls_key_file=str(certificate.key_path),
        settings={
            "default_auth_scheme": "IAM_AUTH",
            "require_tls": True,
            "publish_to_cloudwatch": False,
            "max_connections_percent": 50,
            "connection_borrow_timeout": 10,
        },
    )
    assert config.iam_auth == "REQUIRED"  # IAM_AUTH is the clients' scheme too
    proxy = RdsProxyEmulator(
        lab.workdir / "rdsproxy",
        config,
        environment={"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": REGION},
    )
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def through_proxy(lab: IamLab, proxy: RdsProxyEmulator, user: str, **extra: Any) -> psycopg.Connection[Any]:
    return connect(lab, user, token(user, proxy.port), port=proxy.port, **extra)


def test_end_to_end_iam_logs_in_to_the_database_as_the_clients_own_user(
    lab: IamLab, e2e_proxy: RdsProxyEmulator
) -> None:
    with through_proxy(lab, e2e_proxy, IAM_USER) as conn:
        row = conn.execute("SELECT session_user, current_database()").fetchone()
        assert row == (IAM_USER, DATABASE)
        # The proxy's database connection came through the endpoint's IAM gate: the unix socket.
        row = conn.execute("SELECT client_addr FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
        assert row == (None,)
    assert e2e_proxy.stats()["database_connections_setup_failed"] == 0


def test_end_to_end_iam_refuses_a_user_without_rds_iam_with_the_databases_words(
    lab: IamLab, e2e_proxy: RdsProxyEmulator
) -> None:
    # The proxy accepts the client's token (it is valid for the proxy); the database refuses the
    # proxy's token for a user not granted rds_iam: the client gets PostgreSQL's failure through
    # RDS Proxy's "Request returned an error" (28P01, FATAL).
    with (
        through_proxy(lab, e2e_proxy, PLAIN_USER) as conn,
        pytest.raises(psycopg.errors.InvalidPassword) as refused,
    ):
        conn.execute("SELECT 1")
    assert str(refused.value) == (
        f'Request returned an error: password authentication failed for user "{PLAIN_USER}"'
    )


def test_end_to_end_iam_refuses_a_password_at_the_proxy(lab: IamLab, e2e_proxy: RdsProxyEmulator) -> None:
    with pytest.raises(psycopg.OperationalError, match=f"IAM authentication failed for user {IAM_USER}"):
        connect(lab, IAM_USER, PASSWORD, port=e2e_proxy.port).close()
