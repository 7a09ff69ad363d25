"""terraform/ applied with plain terraform to the AWS emulator, and the local twin following what it declares.

Two applies of the same files with different variables: the kit's defaults (IAM auth and TLS
required) with a quarter of max_connections for the pool, and IAM auth disabled with 40 % and an
init_query. The emulator must take every setting from the applied proxy, read back through the AWS
API, and the handler must run with the applied function's environment.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import boto3
import botocore.exceptions
import psycopg
import pytest

from emulator.stack.embedded import EmbeddedStack, StackConfig, TerraformSettings
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.terraform.workspace import TerraformTools
from tests.support.inprocess import InProcessEnvironment, function_environment

pytestmark = [pytest.mark.terraform, pytest.mark.integration]

# As the other suites: 20 slots, so a quarter of them is a pool of 5.
TEST_STACK = StackConfig(max_connections=20, pool_size=5)


STACKS: dict[str, dict[str, str]] = {
    # The kit's Terraform as it deploys to AWS, with the pool at 25 % (5 of 20 connections), in
    # another region than the kit's default: its functions sign their IAM tokens for it.
    "kit_defaults": {
        "name_prefix": "twin-a",
        "region": "eu-west-1",
        "proxy_max_connections_percent": "25",
        "proxy_max_idle_connections_percent": "10",
    },
    # The same files with IAM auth disabled, TLS optional, 40 % and an init_query.
    "password_auth": {
        "name_prefix": "twin-b",
        "proxy_iam_auth": "DISABLED",
        "proxy_require_tls": "false",
        "proxy_max_connections_percent": "40",
        "proxy_max_idle_connections_percent": "20",
        "proxy_init_query": "SET statement_timeout = '1234s'",
    },
}


@pytest.fixture(scope="module")
def applied(terraform_tools: TerraformTools) -> Iterator[dict[str, EmbeddedStack]]:
    """Both stacks, applied side by side: an apply mostly waits on the provider's polling."""
    stacks = {
        name: EmbeddedStack(
            replace(
                TEST_STACK,
                terraform=TerraformSettings(variables=variables),
                proxy_settings={"metrics_period_seconds": 1},
            )
        )
        for name, variables in STACKS.items()
    }
    with ThreadPoolExecutor(len(stacks)) as pool:
        starts = [pool.submit(stack.start) for stack in stacks.values()]
        concurrent.futures.wait(starts)
        try:
            for started in starts:
                started.result()
            yield stacks
        finally:
            # Every stack stops (destroy included), started or not, side by side as well.
            list(pool.map(EmbeddedStack.stop, stacks.values()))


@pytest.fixture(scope="module")
def kit_defaults(applied: dict[str, EmbeddedStack]) -> EmbeddedStack:
    return applied["kit_defaults"]


@pytest.fixture(scope="module")
def password_auth(applied: dict[str, EmbeddedStack]) -> EmbeddedStack:
    return applied["password_auth"]


@dataclass
class ProxyUnderTest:
    """The applied stack's emulator, and how a client logs in to it."""

    stack: EmbeddedStack
    emulator: RdsProxyEmulator

    @property
    def user(self) -> str:
        return self.stack.config.db_user

    def token(self) -> str:
        aws = self.stack.aws.credentials
        rds = boto3.session.Session().client(
            "rds",
            region_name=self.stack.config.region,  # the proxy's: tokens for another are refused
            aws_access_key_id=aws.access_key_id,
            aws_secret_access_key=aws.secret_access_key,
        )
        return str(
            rds.generate_db_auth_token(
                DBHostname=self.emulator.host, Port=self.emulator.port, DBUsername=self.user
            )
        )

    def connect(self, **extra: Any) -> psycopg.Connection[Any]:
        params: dict[str, Any] = {
            "host": self.emulator.host,
            "port": self.emulator.port,
            "user": self.user,
            "dbname": self.stack.config.database,
            "sslmode": "require",
            "sslrootcert": str(self.stack.ca.ca_path),
            "connect_timeout": 10,
        }
        if "password" not in extra:
            params["password"] = self.token()
        return psycopg.connect(**{**params, **extra}, autocommit=True)


def _emulator(stack: EmbeddedStack) -> ProxyUnderTest:
    assert isinstance(stack.proxy, RdsProxyEmulator)
    return ProxyUnderTest(stack, stack.proxy)


def test_the_emulator_takes_its_settings_from_the_applied_proxy(kit_defaults: EmbeddedStack) -> None:
    assert kit_defaults.applied is not None
    outputs = kit_defaults.applied.outputs
    # The same queries a user runs against AWS.
    rds = kit_defaults.aws.client("rds", kit_defaults.config.region)
    proxy = rds.describe_db_proxies(DBProxyName=outputs["proxy_name"])["DBProxies"][0]
    pool = rds.describe_db_proxy_target_groups(DBProxyName=outputs["proxy_name"])["TargetGroups"][0]
    config = _emulator(kit_defaults).emulator.config

    assert proxy["Auth"][0]["IAMAuth"] == config.iam_auth == "REQUIRED"
    assert proxy["RequireTLS"] is config.require_tls is True
    assert proxy["Auth"][0]["SecretArn"] == config.secret_arn == outputs["secret_arn"]
    assert pool["ConnectionPoolConfig"]["MaxConnectionsPercent"] == config.max_connections_percent == 25
    assert (
        pool["ConnectionPoolConfig"]["MaxIdleConnectionsPercent"] == config.max_idle_connections_percent == 10
    )
    assert pool["ConnectionPoolConfig"]["ConnectionBorrowTimeout"] == config.connection_borrow_timeout == 120
    assert config.idle_client_timeout == proxy["IdleClientTimeout"] == 1800
    # The metric dimensions are the applied names.
    assert config.name == outputs["proxy_name"] == "twin-a-proxy"
    assert config.target_name == outputs["db_instance_identifier"] == "twin-a-db"


def test_the_pool_cap_is_the_applied_share_of_max_connections(kit_defaults: EmbeddedStack) -> None:
    """25 % of max_connections 20 is 5: MaxDatabaseConnectionsAllowed says so, and a burst of 12
    clients never gets more than 5 backends in pg_stat_activity."""
    proxy = _emulator(kit_defaults)
    assert proxy.emulator.metrics()["values"]["MaxDatabaseConnectionsAllowed"] == 5

    clients = 12
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        with kit_defaults.postgres.admin_connection() as admin:
            while not done.is_set():
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (proxy.user,)
                ).fetchone()
                assert row is not None
                peak = max(peak, int(row[0]))

    def one_client(_: int) -> Any:
        with proxy.connect() as conn:
            return conn.execute("SELECT pg_sleep(0.3), 1").fetchone()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one_client, range(clients)))
    finally:
        done.set()
        sampler.join()
    print(f"\n  {clients} clients through a pool of 5: {len(results)} ok, peak backends {peak}")
    assert [row[1] for row in results] == [1] * clients
    assert 1 <= peak <= 5


def test_a_plain_connection_is_refused_when_the_proxy_requires_tls(kit_defaults: EmbeddedStack) -> None:
    proxy = _emulator(kit_defaults)
    with pytest.raises(psycopg.OperationalError, match="This RDS Proxy requires TLS connections"):
        proxy.connect(sslmode="disable")


def test_the_handler_runs_with_the_applied_function_environment(kit_defaults: EmbeddedStack) -> None:
    assert kit_defaults.applied is not None
    name = kit_defaults.applied.outputs["lambda_function_name"]
    applied = kit_defaults.aws.client("lambda", kit_defaults.config.region).get_function_configuration(
        FunctionName=name
    )
    declared = applied["Environment"]["Variables"]
    env = kit_defaults.applied_environment(kit_defaults.applied.function)
    # Everything the function declares, except that its proxy endpoint is the local emulator's.
    assert declared["DB_PROXY_ENDPOINT"].startswith("twin-a-proxy.")
    assert {k: env[k] for k in declared if k not in ("DB_PROXY_ENDPOINT", "DB_PORT")} == {
        k: v for k, v in declared.items() if k not in ("DB_PROXY_ENDPOINT", "DB_PORT")
    }
    assert (env["DB_PROXY_ENDPOINT"], env["DB_PORT"]) == (
        kit_defaults.proxy.host,
        str(kit_defaults.proxy.port),
    )
    assert env["DB_AUTH"] == "iam"
    # Lambda's variables name the function's region, and so does the env file another shell reads.
    assert (env["AWS_REGION"], env["AWS_DEFAULT_REGION"]) == ("eu-west-1", "eu-west-1")
    assert kit_defaults.environment()["AWS_REGION"] == "eu-west-1"

    response = _invoke_once(env, name, applied["Timeout"])
    assert response["ok"], response
    assert response["result"]["user"] == declared["DB_USER"]


def test_without_iam_auth_the_proxy_asks_for_the_secret_password(password_auth: EmbeddedStack) -> None:
    proxy = _emulator(password_auth)
    assert proxy.emulator.config.iam_auth == "DISABLED"
    assert proxy.emulator.config.require_tls is False
    # A plain connection with the secret's password (SCRAM) is accepted ...
    with proxy.connect(password=password_auth.db_password, sslmode="disable") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (proxy.user,)
    # ... and an IAM token is just a wrong password now.
    with pytest.raises(psycopg.OperationalError, match="password"):
        proxy.connect(password=proxy.token(), sslmode="require")


def test_without_iam_auth_the_handler_reads_the_secret_it_is_allowed_and_routed_to(
    password_auth: EmbeddedStack,
) -> None:
    """The function logs in with the secret's password: its role may read that secret, its private
    subnets reach Secrets Manager through an interface endpoint, and the handler, run with the
    applied environment, reads the secret and logs in with it."""
    assert password_auth.applied is not None
    outputs = password_auth.applied.outputs
    region = password_auth.config.region
    aws = password_auth.aws
    function = aws.client("lambda", region).get_function_configuration(
        FunctionName=outputs["lambda_function_name"]
    )
    role = function["Role"].rsplit("/", 1)[-1]
    iam = aws.client("iam", region)
    policies = {
        name: iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
    }
    readers = [
        resource
        for document in policies.values()
        for statement in document["Statement"]
        if "secretsmanager:GetSecretValue" in _listed(statement["Action"])
        for resource in _listed(statement["Resource"])
    ]
    assert readers == [outputs["secret_arn"]]
    endpoints = _endpoints_of(password_auth, function)
    assert [(e["ServiceName"], e["VpcEndpointType"], e["PrivateDnsEnabled"]) for e in endpoints] == [
        (f"com.amazonaws.{region}.secretsmanager", "Interface", True)
    ]
    assert set(endpoints[0]["SubnetIds"]) == set(function["VpcConfig"]["SubnetIds"])

    env = password_auth.applied_environment(password_auth.applied.function)
    assert (env["DB_AUTH"], env["DB_SECRET_ARN"]) == ("secret", outputs["secret_arn"])
    response = _invoke_once(env, function["FunctionName"], function["Timeout"])
    assert response["ok"], response
    assert response["result"]["user"] == env["DB_USER"]


def test_with_iam_auth_the_function_may_not_read_the_secret_and_has_no_endpoint(
    kit_defaults: EmbeddedStack,
) -> None:
    assert kit_defaults.applied is not None
    region = kit_defaults.config.region
    function = kit_defaults.aws.client("lambda", region).get_function_configuration(
        FunctionName=kit_defaults.applied.outputs["lambda_function_name"]
    )
    role = function["Role"].rsplit("/", 1)[-1]
    assert kit_defaults.aws.client("iam", region).list_role_policies(RoleName=role)["PolicyNames"] == [
        "rds-db-connect"
    ]
    assert _endpoints_of(kit_defaults, function) == []


def _invoke_once(env: dict[str, str], name: str, timeout: float) -> dict[str, Any]:
    """The example handler's answer to one invocation in a fresh environment with these variables."""
    with function_environment(env):
        environment = InProcessEnvironment(function_name=name, timeout_seconds=timeout)
        try:
            response: dict[str, Any] = environment.invoke({})
        finally:
            environment.shutdown()
    return response


def _endpoints_of(stack: EmbeddedStack, function: dict[str, Any]) -> list[dict[str, Any]]:
    """The VPC endpoints in the function's VPC, found through its subnets (moto's Lambda reports a
    VpcId of its own making)."""
    ec2 = stack.aws.client("ec2", stack.config.region)
    subnets = ec2.describe_subnets(SubnetIds=function["VpcConfig"]["SubnetIds"])["Subnets"]
    (vpc,) = {subnet["VpcId"] for subnet in subnets}
    return [e for e in ec2.describe_vpc_endpoints()["VpcEndpoints"] if e["VpcId"] == vpc]


def _listed(value: str | list[str]) -> list[str]:
    """An IAM statement's Action or Resource: one string, or a list of them."""
    return [value] if isinstance(value, str) else value


def test_pool_share_and_init_query_follow_the_variables(password_auth: EmbeddedStack) -> None:
    """40 % of 20 is 8; the init_query reached the emulator through the AWS API and ran."""
    proxy = _emulator(password_auth)
    assert proxy.emulator.metrics()["values"]["MaxDatabaseConnectionsAllowed"] == 8
    assert proxy.emulator.config.init_query == "SET statement_timeout = '1234s'"
    with proxy.connect(password=password_auth.db_password, sslmode="disable") as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1234s",)


def test_destroy_removes_what_apply_created(applied: dict[str, EmbeddedStack]) -> None:
    """Both stacks, destroyed side by side, as they were applied: each destroy waits a minute on the
    provider's first poll of its deleted DB instance. The stacks' own destroy at teardown then finds
    nothing left (one after the other, the two destroys made a third of this file's time)."""

    def destroy(stack: EmbeddedStack) -> None:
        assert stack.terraform is not None
        assert stack.applied is not None
        outputs = stack.applied.outputs
        stack.terraform.destroy()
        with pytest.raises(botocore.exceptions.ClientError, match="DBProxyNotFound"):
            stack.aws.client("rds", stack.config.region).describe_db_proxies(
                DBProxyName=outputs["proxy_name"]
            )
        with pytest.raises(botocore.exceptions.ClientError, match="ResourceNotFound"):
            stack.aws.client("lambda", stack.config.region).get_function(
                FunctionName=outputs["lambda_function_name"]
            )
        assert stack.terraform.outputs() == {}

    with ThreadPoolExecutor(len(applied)) as pool:
        list(pool.map(destroy, applied.values()))
