"""The real-AWS stage's logic: its guards, its plan and cost, apply/test/always-destroy, the report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from emulator.paths import REPO, TERRAFORM_DIR
from emulator.stage import compare
from emulator.stage.guards import (
    CONFIRM_ENV,
    CONFIRM_FLAG,
    CONFIRM_VALUE,
    StageRefused,
    aws_session,
    check_checkout,
    check_confirmation,
    check_credentials,
)
from emulator.stage.plan import (
    conditions,
    declared_resources,
    describe,
    hourly_cost,
    planned,
    variable_default,
)
from emulator.stage.run import EXIT_DESTROY_FAILED, EXIT_INTERRUPTED, run_stage, stage_name, stage_variables

pytestmark = pytest.mark.unit


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """An environment where botocore's whole credential chain comes up empty, quickly."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    settings = {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


# -- guards -----------------------------------------------------------------------------------


def test_without_an_explicit_yes_the_stage_refuses_and_says_how_to_give_one() -> None:
    with pytest.raises(StageRefused) as refused:
        check_confirmation(False, {})
    assert CONFIRM_FLAG in str(refused.value)
    assert f"{CONFIRM_ENV}={CONFIRM_VALUE}" in str(refused.value)
    check_confirmation(True, {})
    check_confirmation(False, {CONFIRM_ENV: CONFIRM_VALUE})
    with pytest.raises(StageRefused):
        check_confirmation(False, {CONFIRM_ENV: "yes"})  # the value says what is agreed to


def test_without_credentials_the_stage_names_what_is_missing(no_aws_credentials: dict[str, str]) -> None:
    with pytest.raises(StageRefused) as refused:
        check_credentials(aws_session({**no_aws_credentials, "AWS_REGION": "eu-west-1"}))
    assert "AWS_ACCESS_KEY_ID" in str(refused.value)
    assert "AWS_PROFILE" in str(refused.value)


class _Session:
    def __init__(self, region: str | None, error: Exception | None = None) -> None:
        self.region_name = region
        self.error = error

    def get_credentials(self) -> object:
        return object()

    def client(self, service: str, region_name: str) -> Any:
        session = self

        class Sts:
            def get_caller_identity(self) -> dict[str, str]:
                if session.error is not None:
                    raise session.error
                return {"Account": "123456789012", "Arn": "arn:aws:iam::123456789012:user/ci"}

        assert service == "sts"
        return Sts()


def test_without_a_region_the_stage_refuses() -> None:
    with pytest.raises(StageRefused, match="AWS_REGION"):
        check_credentials(_Session(region=None))


def test_credentials_aws_refuses_stop_the_stage_with_aws_words() -> None:
    error = botocore.exceptions.ClientError(
        {"Error": {"Code": "InvalidClientTokenId", "Message": "The security token is invalid."}},
        "GetCallerIdentity",
    )
    with pytest.raises(StageRefused, match="The security token is invalid"):
        check_credentials(_Session(region="eu-west-1", error=error))
    identity = check_credentials(_Session(region="eu-west-1"))
    assert (identity.account, identity.region) == ("123456789012", "eu-west-1")


def test_no_answer_from_aws_is_told_as_a_network_failure_not_as_refused_credentials() -> None:
    error = botocore.exceptions.EndpointConnectionError(endpoint_url="https://sts.eu-west-1.amazonaws.com/")
    with pytest.raises(StageRefused) as refused:
        check_credentials(_Session(region="eu-west-1", error=error))
    assert "could not be reached" in str(refused.value)
    assert "sts.eu-west-1.amazonaws.com" in str(refused.value)
    assert "did not accept" not in str(refused.value)


def test_the_command_refuses_before_creating_anything(no_aws_credentials: dict[str, str]) -> None:
    def stage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "emulator", "stage", *args],
            cwd=REPO,
            env={**no_aws_credentials, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    unconfirmed = stage()
    assert unconfirmed.returncode == 2
    assert CONFIRM_FLAG in unconfirmed.stdout
    no_credentials = stage(CONFIRM_FLAG, AWS_REGION="eu-west-1")
    assert no_credentials.returncode == 2
    assert "no AWS credentials found" in no_credentials.stdout
    assert "Applying" not in unconfirmed.stdout + no_credentials.stdout


def test_an_installed_kit_without_tests_aws_is_refused_before_anything(tmp_path: Path) -> None:
    """A wheel has no tests/aws: the stage would deploy, find no tests, and destroy again."""
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    with pytest.raises(StageRefused, match="run it from a checkout of the kit"):
        check_checkout(tmp_path, cwd=elsewhere)
    check_checkout(REPO)


def test_an_installed_kit_run_inside_a_checkout_is_told_to_use_the_checkout(tmp_path: Path) -> None:
    with pytest.raises(StageRefused, match=r"this directory is a checkout of the kit: run `nox -s aws` here"):
        check_checkout(tmp_path, cwd=REPO)


# -- plan and cost ----------------------------------------------------------------------------


def test_the_plan_lists_what_terraform_declares_and_a_rough_hourly_cost() -> None:
    resources = declared_resources()
    expected = ("aws_db_proxy.this", "aws_db_instance.this", "aws_lambda_function.probe", "aws_vpc.this")
    assert set(expected) <= set(resources)
    cost = hourly_cost(variable_default("db_instance_class"), int(variable_default("db_allocated_storage")))
    assert cost.hourly is not None
    assert 0.03 < cost.hourly < 0.10  # db.t4g.micro, 20 GB, a proxy billed for 2 vCPUs, one secret
    text = describe(resources, cost, region="eu-west-1", name_prefix="twin-stage-abc123")
    assert "twin-stage-abc123" in text
    assert f"${cost.hourly:.3f}/h" in text


def test_the_plan_lists_what_the_stage_s_variables_create_and_leaves_out_what_they_do_not() -> None:
    """A resource counted by a condition (`count = CONDITION ? 1 : 0`) is in the plan when the
    condition holds with the stage's variables (else the declared defaults): the probe is (the
    stage sets stage_probe), the Secrets Manager endpoint only with IAM auth disabled."""
    variables = stage_variables("twin-stage-abc123", Path("lambda-package.zip"), "us-east-1")
    resources, undecided = planned(variables)
    assert "aws_lambda_function.probe" in resources
    assert "aws_vpc_endpoint.secretsmanager" not in resources
    assert "aws_iam_role_policy.lambda_secret" not in resources
    assert undecided == {}
    resources, _ = planned({**variables, "proxy_iam_auth": "DISABLED"})
    assert {"aws_vpc_endpoint.secretsmanager", "aws_iam_role_policy.lambda_secret"} <= set(resources)
    assert set(resources) <= set(declared_resources())


def test_a_condition_the_plan_cannot_judge_is_shown_beside_its_resource(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        'variable "on" {\n  type = bool\n}\n\n'
        "locals {\n  wanted = var.on\n}\n\n"
        'resource "aws_sqs_queue" "judged" {\n  count = local.wanted ? 1 : 0\n}\n\n'
        'resource "aws_sqs_queue" "other" {\n  count = length(var.names) > 0 ? 1 : 0\n}\n\n'
        'resource "aws_sqs_queue" "always" {\n  name = "x"\n}\n'
    )
    assert conditions(tmp_path) == {
        "aws_sqs_queue.judged": "var.on",
        "aws_sqs_queue.other": "length(var.names) > 0",
    }
    # var.on has no default: judged only when given.
    assert planned({"on": False}, tmp_path) == (
        ["aws_sqs_queue.other", "aws_sqs_queue.always"],
        {"aws_sqs_queue.other": "length(var.names) > 0"},
    )
    assert planned({}, tmp_path)[1] == {
        "aws_sqs_queue.judged": "var.on",
        "aws_sqs_queue.other": "length(var.names) > 0",
    }
    text = describe(
        ["aws_sqs_queue.other"],
        hourly_cost("db.t4g.micro", 20),
        region="us-east-1",
        name_prefix="x",
        only_if={"aws_sqs_queue.other": "length(var.names) > 0"},
    )
    assert "  aws_sqs_queue.other  (only if length(var.names) > 0)\n" in text


def test_every_count_in_the_kit_s_terraform_is_a_number_or_a_condition_the_plan_reads() -> None:
    """conditions() reads `count = CONDITION ? 1 : 0` as a block's first argument: a count written
    any other way would be listed as always created."""
    read = conditions()
    for path in sorted(TERRAFORM_DIR.glob("*.tf")):
        for line in path.read_text().splitlines():
            found = re.fullmatch(r"\s*count\s*=\s*(.+?)\s*", line)
            if found and not found[1].isdigit():
                assert re.fullmatch(r".+ \? 1 : 0", found[1]), f"{path.name}: {line.strip()}"
    assert len(read) == sum(
        1
        for path in TERRAFORM_DIR.glob("*.tf")
        for line in path.read_text().splitlines()
        if re.fullmatch(r"\s*count\s*=\s*.+ \? 1 : 0\s*", line)
    )


def test_an_instance_class_without_a_known_price_is_shown_as_unknown_not_guessed() -> None:
    cost = hourly_cost("db.x2iedn.32xlarge", 20)
    assert cost.hourly is None
    assert "unknown" in describe([], cost, region="us-east-1", name_prefix="x")


def test_every_run_gets_a_valid_name_of_its_own_and_the_stage_settings() -> None:
    names = {stage_name() for _ in range(20)}
    assert len(names) == 20
    pattern = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"  # terraform/main.tf's validation of name_prefix
    assert all(re.match(pattern, name) and "--" not in name for name in names)
    variables = stage_variables("twin-stage-abc123", Path("build/p.zip"), "eu-west-1")
    assert variables["tags"]["local-twin-stage"] == "twin-stage-abc123"
    assert variables["stage_probe"] is True
    assert variables["proxy_debug_logging"] is True
    assert variables["proxy_max_connections_percent"] == 5


# -- apply, test, always destroy --------------------------------------------------------------


class FakeDeployment:
    def __init__(
        self, *, apply_error: BaseException | None = None, destroy_error: BaseException | None = None
    ) -> None:
        self.apply_error = apply_error
        self.destroy_error = destroy_error
        self.calls: list[str] = []

    def apply(self) -> dict[str, Any]:
        self.calls.append("apply")
        if self.apply_error is not None:
            raise self.apply_error
        return {"proxy_name": "twin-stage-abc123-proxy"}

    def destroy(self) -> None:
        self.calls.append("destroy")
        if self.destroy_error is not None:
            raise self.destroy_error

    def leftovers(self) -> list[str]:
        return ["aws_db_instance.this", "aws_db_proxy.this"]

    def manual_destroy_hint(self) -> str:
        return "cd /somewhere && terraform destroy"


def _tests(code: int) -> Any:
    def run(outputs: Mapping[str, Any]) -> int:
        assert outputs["proxy_name"] == "twin-stage-abc123-proxy"
        return code

    return run


def test_a_passing_run_applies_tests_and_destroys() -> None:
    deployment = FakeDeployment()
    assert run_stage(deployment, _tests(0), say=lambda _: None) == 0
    assert deployment.calls == ["apply", "destroy"]


def test_failing_tests_still_destroy_and_keep_the_tests_exit_code() -> None:
    deployment = FakeDeployment()
    assert run_stage(deployment, _tests(1), say=lambda _: None) == 1
    assert deployment.calls == ["apply", "destroy"]


def test_an_apply_that_breaks_half_way_is_destroyed_too() -> None:
    deployment = FakeDeployment(apply_error=RuntimeError("InsufficientDBInstanceCapacity"))
    said: list[str] = []
    assert run_stage(deployment, _tests(0), say=said.append) == 1
    assert deployment.calls == ["apply", "destroy"]
    assert any("InsufficientDBInstanceCapacity" in line for line in said)


def test_ctrl_c_during_the_tests_destroys_and_exits_130() -> None:
    def interrupted(outputs: Mapping[str, Any]) -> int:
        raise KeyboardInterrupt

    deployment = FakeDeployment()
    assert run_stage(deployment, interrupted, say=lambda _: None) == EXIT_INTERRUPTED
    assert deployment.calls == ["apply", "destroy"]


def test_a_failed_destroy_is_loud_names_what_is_left_and_fails_even_a_passing_run() -> None:
    deployment = FakeDeployment(destroy_error=RuntimeError("DependencyViolation: sg-0abc"))
    said: list[str] = []
    assert run_stage(deployment, _tests(0), say=said.append) == EXIT_DESTROY_FAILED
    report = "\n".join(said)
    assert "DESTROY FAILED" in report
    assert "aws_db_instance.this" in report
    assert "aws_db_proxy.this" in report
    assert "DependencyViolation: sg-0abc" in report
    assert "cd /somewhere && terraform destroy" in report
    assert "local-twin-stage" in report  # the tag that finds every resource


# -- the comparison report --------------------------------------------------------------------


def test_the_report_sets_each_figure_beside_its_twin_and_marks_differences(tmp_path: Path) -> None:
    (tmp_path / "local.json").write_text(
        json.dumps({"burst": {"DatabaseConnections (max)": 5.0, "invocations": 12}, "tls": {"text": "a"}})
    )
    (tmp_path / "aws.json").write_text(
        json.dumps({"burst": {"DatabaseConnections (max)": 4.0, "invocations": 12}})
    )
    report = compare.write_report(tmp_path)
    text = report.read_text()
    assert "| burst | DatabaseConnections (max) | 5 | 4 | differs |" in text
    assert "| burst | invocations | 12 | 12 | same |" in text
    assert "| tls | text | a | - | not measured on both |" in text
    rows = json.loads((tmp_path / "comparison.json").read_text())
    assert {row["verdict"] for row in rows} == {"same", "differs", "not measured on both"}


# -- the deployer's policy --------------------------------------------------------------------

# What creating and deleting each resource type takes (the AWS provider's own calls).
CREATE_AND_DELETE = {
    "aws_vpc": ("ec2:CreateVpc", "ec2:DeleteVpc"),
    "aws_subnet": ("ec2:CreateSubnet", "ec2:DeleteSubnet"),
    "aws_security_group": ("ec2:CreateSecurityGroup", "ec2:DeleteSecurityGroup"),
    "aws_vpc_security_group_ingress_rule": (
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:RevokeSecurityGroupIngress",
    ),
    "aws_vpc_security_group_egress_rule": (
        "ec2:AuthorizeSecurityGroupEgress",
        "ec2:RevokeSecurityGroupEgress",
    ),
    # Private DNS associates the VPC with the service's hosted zone (a dependent action of the create).
    "aws_vpc_endpoint": (
        "ec2:CreateVpcEndpoint",
        "ec2:DeleteVpcEndpoints",
        "ec2:DescribeVpcEndpoints",
        "route53:AssociateVPCWithHostedZone",
    ),
    "aws_db_subnet_group": ("rds:CreateDBSubnetGroup", "rds:DeleteDBSubnetGroup"),
    "aws_db_parameter_group": ("rds:CreateDBParameterGroup", "rds:DeleteDBParameterGroup"),
    "aws_db_instance": ("rds:CreateDBInstance", "rds:DeleteDBInstance"),
    "aws_db_proxy": ("rds:CreateDBProxy", "rds:DeleteDBProxy"),
    "aws_db_proxy_default_target_group": ("rds:ModifyDBProxyTargetGroup", "rds:DescribeDBProxyTargetGroups"),
    "aws_db_proxy_target": ("rds:RegisterDBProxyTargets", "rds:DeregisterDBProxyTargets"),
    "aws_secretsmanager_secret": ("secretsmanager:CreateSecret", "secretsmanager:DeleteSecret"),
    "aws_secretsmanager_secret_version": ("secretsmanager:PutSecretValue", "secretsmanager:DescribeSecret"),
    "aws_iam_role": ("iam:CreateRole", "iam:DeleteRole"),
    "aws_iam_role_policy": ("iam:PutRolePolicy", "iam:DeleteRolePolicy"),
    "aws_iam_role_policy_attachment": ("iam:AttachRolePolicy", "iam:DetachRolePolicy"),
    "aws_lambda_function": ("lambda:CreateFunction", "lambda:DeleteFunction"),
}


def test_the_documented_deployer_policy_can_create_and_delete_everything_terraform_declares() -> None:
    policy = json.loads((REPO / "docs" / "aws-stage-policy.json").read_text())
    allowed = {action for statement in policy["Statement"] for action in statement["Action"]}
    for resource in declared_resources():
        kind = resource.split(".")[0]
        assert kind in CREATE_AND_DELETE, f"{kind}: add its actions to docs/aws-stage-policy.json and here"
        assert set(CREATE_AND_DELETE[kind]) <= allowed, kind
    # What the stage itself calls: the identity check, the tests' invocations, metrics and logs.
    assert {"sts:GetCallerIdentity", "lambda:InvokeFunction", "cloudwatch:GetMetricStatistics"} <= allowed
    assert {"logs:FilterLogEvents", "iam:PassRole", "secretsmanager:GetRandomPassword"} <= allowed
