"""Where moto answers otherwise than AWS, the kit's fixes: checked against moto itself, in-process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from emulator.stack.moto import AwsEmulator
from emulator.stack.moto_quirks import TARGET_HEALTH, apply_moto_quirk_fixes

pytestmark = pytest.mark.unit


@pytest.fixture
def rds() -> Iterator[Any]:
    apply_moto_quirk_fixes()
    with mock_aws():
        client = boto3.client("rds", region_name="us-east-1")
        client.create_db_instance(
            DBInstanceIdentifier="db1",
            Engine="postgres",
            DBInstanceClass="db.t4g.micro",
            MasterUsername="admin_user",
            MasterUserPassword="a-password-1",
        )
        ec2 = boto3.client("ec2", region_name="us-east-1")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{n}.0/24")["Subnet"]["SubnetId"] for n in (1, 2)
        ]
        secrets = boto3.client("secretsmanager", region_name="us-east-1")
        secret = secrets.create_secret(Name="s", SecretString='{"username": "u", "password": "p"}')
        client.create_db_proxy(
            DBProxyName="proxy1",
            EngineFamily="POSTGRESQL",
            Auth=[{"AuthScheme": "SECRETS", "SecretArn": secret["ARN"], "IAMAuth": "DISABLED"}],
            RoleArn="arn:aws:iam::123456789012:role/proxy",
            VpcSubnetIds=subnets,
        )
        client.register_db_proxy_targets(DBProxyName="proxy1", DBInstanceIdentifiers=["db1"])
        yield client
    TARGET_HEALTH.clear()


def _health(rds: Any) -> dict[str, str]:
    (target,) = rds.describe_db_proxy_targets(DBProxyName="proxy1")["Targets"]
    health: dict[str, str] = target["TargetHealth"]
    return health


def test_target_health_follows_what_the_proxy_sees_of_its_database(rds: Any) -> None:
    TARGET_HEALTH["db1"] = lambda: (False, "cannot connect to 127.0.0.1:5432")
    assert _health(rds) == {
        "State": "UNAVAILABLE",
        "Reason": "UNREACHABLE",
        "Description": "cannot connect to 127.0.0.1:5432",
    }
    TARGET_HEALTH["db1"] = lambda: (True, "")
    assert _health(rds) == {"State": "AVAILABLE"}


def test_a_target_the_twin_does_not_serve_keeps_motos_answer(rds: Any) -> None:
    assert _health(rds)["State"] in ("REGISTERING", "AVAILABLE")


def test_a_proxy_endpoint_is_created_described_tagged_and_deleted_as_rds_does(rds: Any) -> None:
    created = rds.create_db_proxy_endpoint(
        DBProxyName="proxy1",
        DBProxyEndpointName="reader",
        VpcSubnetIds=rds.describe_db_proxies(DBProxyName="proxy1")["DBProxies"][0]["VpcSubnetIds"],
        TargetRole="READ_ONLY",
        Tags=[{"Key": "team", "Value": "orders"}],
    )["DBProxyEndpoint"]
    assert created["TargetRole"] == "READ_ONLY"
    assert created["IsDefault"] is False
    assert created["Endpoint"].startswith("reader.endpoint.proxy-")
    assert created["DBProxyEndpointArn"].split(":")[5] == "db-proxy-endpoint"

    (by_name,) = rds.describe_db_proxy_endpoints(DBProxyEndpointName="reader")["DBProxyEndpoints"]
    assert (by_name["Status"], by_name["Endpoint"]) == ("available", created["Endpoint"])
    # By proxy: the proxy's own endpoint is listed too, as the default one.
    by_proxy = rds.describe_db_proxy_endpoints(DBProxyName="proxy1")["DBProxyEndpoints"]
    assert [(e["DBProxyEndpointName"], e["IsDefault"]) for e in by_proxy] == [
        ("default", True),
        ("reader", False),
    ]
    tags = rds.list_tags_for_resource(ResourceName=created["DBProxyEndpointArn"])["TagList"]
    assert tags == [{"Key": "team", "Value": "orders"}]

    rds.delete_db_proxy_endpoint(DBProxyEndpointName="reader")
    with pytest.raises(rds.exceptions.ClientError) as gone:
        rds.describe_db_proxy_endpoints(DBProxyEndpointName="reader")
    assert gone.value.response["Error"]["Code"] == "DBProxyEndpointNotFoundFault"


def test_a_proxy_endpoint_of_a_proxy_that_is_not_there_is_refused(rds: Any) -> None:
    with pytest.raises(rds.exceptions.ClientError) as refused:
        rds.create_db_proxy_endpoint(
            DBProxyName="nope", DBProxyEndpointName="reader", VpcSubnetIds=["subnet-1"]
        )
    assert refused.value.response["Error"]["Code"] == "DBProxyNotFoundFault"
    with pytest.raises(rds.exceptions.ClientError) as duplicate:
        rds.create_db_proxy_endpoint(
            DBProxyName="proxy1", DBProxyEndpointName="default", VpcSubnetIds=["subnet-1"]
        )
    assert duplicate.value.response["Error"]["Code"] == "DBProxyEndpointAlreadyExistsFault"


def test_get_secret_value_without_a_stage_reads_awscurrent_after_a_rotation_moved_it() -> None:
    apply_moto_quirk_fixes()
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name="us-east-1")
        arn = secrets.create_secret(Name="rotated", SecretString='{"password": "old"}')["ARN"]
        old = secrets.get_secret_value(SecretId=arn)["VersionId"]
        secrets.put_secret_value(
            SecretId=arn,
            ClientRequestToken="v2-token-0000000000000000000000000",
            SecretString='{"password": "new"}',
            VersionStages=["AWSPENDING"],
        )
        secrets.update_secret_version_stage(
            SecretId=arn,
            VersionStage="AWSCURRENT",
            MoveToVersionId="v2-token-0000000000000000000000000",
            RemoveFromVersionId=old,
        )
        read = secrets.get_secret_value(SecretId=arn)
        assert read["SecretString"] == '{"password": "new"}'
        assert "AWSCURRENT" in read["VersionStages"]
        by_name = secrets.get_secret_value(SecretId="rotated")
        assert by_name["VersionId"] == "v2-token-0000000000000000000000000"


@pytest.fixture(scope="module")
def cloudwatch() -> Iterator[Any]:
    # moto's server in its own process with the fixes applied there, as the stack runs it.
    server = AwsEmulator("eu-central-1")
    server.start()
    yield server.client("cloudwatch")
    server.stop()


def _put(cloudwatch: Any, name: str, dimensions: dict[str, str], times: int) -> None:
    for value in range(times):
        cloudwatch.put_metric_data(
            Namespace="Quirks/CloudWatch",
            MetricData=[
                {
                    "MetricName": name,
                    "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
                    "Value": float(value),
                }
            ],
        )


def _listed(cloudwatch: Any, **filters: Any) -> list[tuple[str, dict[str, str]]]:
    pages = cloudwatch.get_paginator("list_metrics").paginate(Namespace="Quirks/CloudWatch", **filters)
    listed = [
        (m["MetricName"], {d["Name"]: d["Value"] for d in m["Dimensions"]})
        for page in pages
        for m in page["Metrics"]
    ]
    return sorted(listed, key=lambda metric: (metric[0], sorted(metric[1].items())))


def test_list_metrics_names_each_metric_once_however_many_data_points_and_dimensions(
    cloudwatch: Any,
) -> None:
    three = {"ProxyName": "p", "TargetGroup": "default", "TargetRole": "READ_WRITE"}
    _put(cloudwatch, "DatabaseConnections", three, times=4)
    _put(cloudwatch, "DatabaseConnections", {"ProxyName": "p"}, times=3)
    _put(cloudwatch, "ClientConnections", {}, times=2)
    assert _listed(cloudwatch) == [
        ("ClientConnections", {}),
        ("DatabaseConnections", {"ProxyName": "p"}),
        ("DatabaseConnections", three),
    ]
    assert _listed(cloudwatch, Dimensions=[{"Name": "TargetRole"}]) == [("DatabaseConnections", three)]
    assert _listed(
        cloudwatch, MetricName="DatabaseConnections", Dimensions=[{"Name": "ProxyName", "Value": "p"}]
    ) == [
        ("DatabaseConnections", {"ProxyName": "p"}),
        ("DatabaseConnections", three),
    ]
