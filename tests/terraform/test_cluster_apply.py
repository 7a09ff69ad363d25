"""Terraform declares the database's kind: an aws_rds_cluster with aws_rds_cluster_instances runs as
an Aurora cluster (a writer and a replica per further instance), an aws_db_instance with multi_az as a
Multi-AZ instance, and each aws_db_proxy_endpoint gets its name and role; applied to the twin's AWS
emulator (moto, with the kit's fixes) and followed by the stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from emulator.stack.cluster import ClusterKind, Role, read_topology
from emulator.stack.embedded import EmbeddedStack, StackConfig, TerraformSettings
from emulator.stack.proxies import ProxyKind
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.terraform.applied import AppliedFunction
from emulator.terraform.workspace import TerraformTools

pytestmark = [pytest.mark.terraform, pytest.mark.integration]

NETWORK_AND_SECRET = """
terraform {
  required_providers {
    aws = { source = "hashicorp/aws" }
  }
}

resource "aws_vpc" "this" {
  cidr_block = "10.0.0.0/16"
}

resource "aws_subnet" "a" {
  vpc_id            = aws_vpc.this.id
  cidr_block        = "10.0.1.0/24"
  availability_zone = "us-east-1a"
}

resource "aws_subnet" "b" {
  vpc_id            = aws_vpc.this.id
  cidr_block        = "10.0.2.0/24"
  availability_zone = "us-east-1b"
}

resource "aws_db_subnet_group" "this" {
  name       = "orders"
  subnet_ids = [aws_subnet.a.id, aws_subnet.b.id]
}

resource "aws_secretsmanager_secret" "db" {
  name = "orders-db"
}

resource "aws_secretsmanager_secret_version" "db" {
  secret_id     = aws_secretsmanager_secret.db.id
  secret_string = jsonencode({ username = "orders_app", password = "a-long-password-1" })
}
"""

AURORA = """
resource "aws_rds_cluster" "this" {
  cluster_identifier   = "orders"
  engine               = "aurora-postgresql"
  engine_version       = "15.4"
  database_name        = "orders"
  master_username      = "orders_app"
  master_password      = "a-long-password-1"
  db_subnet_group_name = aws_db_subnet_group.this.name
  skip_final_snapshot  = true
}

resource "aws_rds_cluster_instance" "this" {
  count              = 3
  identifier         = "orders-instance-${count.index + 1}"
  cluster_identifier = aws_rds_cluster.this.id
  instance_class     = "db.r6g.large"
  engine             = aws_rds_cluster.this.engine
  engine_version     = aws_rds_cluster.this.engine_version
}

resource "aws_db_proxy_target" "this" {
  db_proxy_name         = aws_db_proxy.this.name
  target_group_name     = aws_db_proxy_default_target_group.this.name
  db_cluster_identifier = aws_rds_cluster.this.id
  depends_on            = [aws_rds_cluster_instance.this]
}

resource "aws_db_proxy_endpoint" "reader" {
  db_proxy_name          = aws_db_proxy.this.name
  db_proxy_endpoint_name = "orders-reader"
  vpc_subnet_ids         = [aws_subnet.a.id, aws_subnet.b.id]
  target_role            = "READ_ONLY"
}
"""

MULTI_AZ = """
resource "aws_db_instance" "this" {
  identifier           = "orders-db"
  engine               = "postgres"
  engine_version       = "15.4"
  instance_class       = "db.t4g.micro"
  allocated_storage    = 20
  db_name              = "orders"
  username             = "orders_app"
  password             = "a-long-password-1"
  db_subnet_group_name = aws_db_subnet_group.this.name
  multi_az             = true
  skip_final_snapshot  = true
}

resource "aws_db_proxy_target" "this" {
  db_proxy_name          = aws_db_proxy.this.name
  target_group_name      = aws_db_proxy_default_target_group.this.name
  db_instance_identifier = aws_db_instance.this.identifier
}
"""

PROXY = """
resource "aws_iam_role" "proxy" {
  name = "orders-proxy"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{
      Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "rds.amazonaws.com" }
    }]
  })
}

resource "aws_db_proxy" "this" {
  name           = "orders-proxy"
  engine_family  = "POSTGRESQL"
  role_arn       = aws_iam_role.proxy.arn
  vpc_subnet_ids = [aws_subnet.a.id, aws_subnet.b.id]
  require_tls    = false

  auth {
    auth_scheme = "SECRETS"
    iam_auth    = "DISABLED"
    secret_arn  = aws_secretsmanager_secret.db.arn
  }
}

resource "aws_db_proxy_default_target_group" "this" {
  db_proxy_name = aws_db_proxy.this.name
  connection_pool_config {
    max_connections_percent      = 50
    max_idle_connections_percent = 25
  }
}
"""


def _configuration(tmp_path: Path, database: str, name: str) -> Path:
    """The configuration with its resources named after `name` (each stack has a moto of its own;
    the names keep the two configurations' logs and resources apart)."""
    source = tmp_path / "infra"
    source.mkdir()
    (source / "main.tf").write_text((NETWORK_AND_SECRET + PROXY + database).replace("orders", name))
    return source


def _stack(source: Path) -> EmbeddedStack:
    return EmbeddedStack(
        StackConfig(
            proxy=ProxyKind.EMULATOR,
            proxy_settings={},
            dns_ttl_seconds=0,
            terraform=TerraformSettings(source=source, destroy_on_stop=False),
        )
    )


@pytest.fixture(scope="module")
def aurora(
    terraform_tools: TerraformTools, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedStack]:
    with _stack(_configuration(tmp_path_factory.mktemp("aurora"), AURORA, "orders")) as stack:
        yield stack


def test_an_applied_aurora_cluster_runs_as_a_writer_and_a_replica_per_further_instance(
    aurora: EmbeddedStack,
) -> None:
    applied = aurora.applied
    assert applied is not None
    database = applied.database
    assert (database.kind, database.identifier, database.db_name) == ("aurora", "orders", "orders")
    assert sorted(database.instances) == ["orders-instance-1", "orders-instance-2", "orders-instance-3"]
    cluster = aurora.cluster
    assert cluster is not None
    assert aurora.config.database_kind is ClusterKind.AURORA
    # The writer is the one the cluster reports as its writer (IsClusterWriter), the others read.
    assert [(i.name, i.role) for i in cluster.instances] == [
        (database.instances[0], Role.WRITER),
        (database.instances[1], Role.READER),
        (database.instances[2], Role.READER),
    ]
    assert read_topology(aurora.topology_path)["writer"] == database.instances[0]


def test_the_applied_proxy_endpoint_is_read_back_with_its_role(aurora: EmbeddedStack) -> None:
    applied = aurora.applied
    assert applied is not None
    (endpoint,) = applied.proxy.endpoints
    assert (endpoint.name, endpoint.target_role) == ("orders-reader", "READ_ONLY")
    assert endpoint.host.startswith("orders-reader.endpoint.proxy-")
    assert applied.proxy.target_cluster == "orders"
    # The proxy has a listener of its own for it, named in the env file, where the endpoint's host maps.
    env = aurora.environment()
    port = env["PROXY_ENDPOINT_ORDERS_READER_PORT"]
    assert isinstance(aurora.proxy, RdsProxyEmulator)
    assert aurora.proxy.endpoints()["orders-reader"] == {"port": int(port), "role": "READ_ONLY"}
    function = AppliedFunction("f", "index.handler", "python3.12", 3, 128, None, {"DB_HOST": endpoint.host})
    assert aurora.applied_environment(function)["DB_HOST"] == "127.0.0.1"
    credentials = {
        "dbname": "orders",
        "user": "orders_app",
        "password": "a-long-password-1",
        "sslmode": "prefer",
    }
    with psycopg.connect(host="127.0.0.1", port=int(port), **credentials) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_a_function_s_cluster_endpoints_map_to_the_local_writer_and_reader(aurora: EmbeddedStack) -> None:
    applied = aurora.applied
    assert applied is not None
    endpoint = aurora.database_endpoint
    assert endpoint is not None
    function = AppliedFunction(
        name="orders",
        handler="index.handler",
        runtime="python3.12",
        timeout=3,
        memory_size=128,
        reserved_concurrency=None,
        environment={
            "WRITER_HOST": applied.database.address,
            "WRITER_PORT": "5432",
            "READER_HOST": applied.database.reader_address,
            "READER_PORT": "5432",
        },
    )
    env = aurora.applied_environment(function)
    assert (env["WRITER_HOST"], env["WRITER_PORT"]) == (endpoint.host, str(endpoint.writer_port))
    assert (env["READER_HOST"], env["READER_PORT"]) == (endpoint.host, str(endpoint.reader_port))
    credentials = {
        "dbname": "orders",
        "user": "orders_app",
        "password": "a-long-password-1",
        "sslmode": "prefer",
    }
    with psycopg.connect(host=env["WRITER_HOST"], port=int(env["WRITER_PORT"]), **credentials) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    with psycopg.connect(host=env["READER_HOST"], port=int(env["READER_PORT"]), **credentials) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_an_applied_multi_az_instance_runs_with_a_standby_nobody_reads(
    terraform_tools: TerraformTools, tmp_path: Path
) -> None:
    with _stack(_configuration(tmp_path, MULTI_AZ, "billing")) as stack:
        assert stack.config.database_kind is ClusterKind.MULTI_AZ
        cluster = stack.cluster
        assert cluster is not None
        assert [(i.name, i.role) for i in cluster.instances] == [
            ("billing-db", Role.WRITER),
            ("billing-db-standby", Role.STANDBY),
        ]
        assert stack.database_endpoint is not None
        assert stack.database_endpoint.reader_port is None
        report = stack.failover()
        assert report.new_writer == "billing-db-standby"
