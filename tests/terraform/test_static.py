"""The Terraform files on their own: canonical format, valid, and what they declare (mock provider)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from emulator.awslambda.package import build_package
from emulator.terraform.workspace import TERRAFORM_DIR, TerraformTools, TerraformWorkspace, fmt_check

pytestmark = pytest.mark.terraform


@pytest.fixture(scope="module")
def workspace(
    terraform_tools: TerraformTools, tmp_path_factory: pytest.TempPathFactory
) -> TerraformWorkspace:
    workdir = tmp_path_factory.mktemp("terraform-static")
    package = build_package(workdir / "lambda-package.zip", with_dependencies=False)
    ws = TerraformWorkspace(terraform_tools, workdir / "config", variables={"lambda_package": str(package)})
    ws.init()
    return ws


def test_files_are_in_canonical_format(terraform_tools: TerraformTools) -> None:
    assert fmt_check(terraform_tools) == ""


def test_configuration_is_valid(workspace: TerraformWorkspace) -> None:
    workspace.validate()


def test_declared_settings_hold_under_the_mock_provider(workspace: TerraformWorkspace) -> None:
    """terraform/tests/*.tftest.hcl: pool settings, the rds-db:connect ARN, the Lambda environment,
    the security group chain, variables flowing through (with IAM auth disabled, the function may
    read the secret and has a Secrets Manager endpoint), and the stage's probe. Every run declared
    must have run and passed."""
    declared = sum(
        len(re.findall(r'^run "', path.read_text(), re.MULTILINE))
        for path in (TERRAFORM_DIR / "tests").glob("*.tftest.hcl")
    )
    output = workspace.test()
    print(output)
    assert f"{declared} passed, 0 failed" in output


def test_a_broken_expectation_fails_the_terraform_tests(
    terraform_tools: TerraformTools, workspace: TerraformWorkspace, tmp_path: Path
) -> None:
    """The mock-provider tests can fail: with another default pool size, the first run must fail."""
    broken = TerraformWorkspace(
        terraform_tools,
        tmp_path / "broken",
        variables={**workspace.variables, "proxy_max_connections_percent": "60"},
    )
    broken.init()
    result = subprocess.run(
        [terraform_tools.terraform, "test", "-no-color", *broken.var_args()],
        cwd=broken.dir,
        env=broken.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "max_connections_percent must be 100" in result.stdout + result.stderr


def test_the_repository_keeps_no_terraform_state() -> None:
    """Workspaces are copies: init and apply never write into terraform/ itself."""
    assert not (TERRAFORM_DIR / ".terraform").exists()
    assert not list(TERRAFORM_DIR.glob("*.tfstate*"))
