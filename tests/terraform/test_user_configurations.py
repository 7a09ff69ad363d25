"""A user's own Terraform on the twin: no hidden contracts, and clear words when it cannot be followed."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from emulator.errors import ComponentError
from emulator.stack.embedded import EmbeddedStack, StackConfig, TerraformSettings
from emulator.stack.proxies import ProxyKind
from emulator.terraform.workspace import TerraformTools

pytestmark = [pytest.mark.terraform, pytest.mark.integration]

PROVIDER = """
terraform {
  required_providers {
    aws = { source = "hashicorp/aws" }
  }
}
"""
# Quick to apply: no database, no proxy.
SECRET_ONLY = (
    PROVIDER
    + """
variable "name" {
  type = string
}

resource "aws_secretsmanager_secret" "app" {
  name = var.name
}
"""
)


def _start(source: Path, **settings: object) -> None:
    config = StackConfig(proxy=ProxyKind.DIRECT, terraform=TerraformSettings(source=source, **settings))  # type: ignore[arg-type]
    with EmbeddedStack(config):
        pass


@pytest.fixture
def secret_only(tmp_path: Path) -> Path:
    source = tmp_path / "infra"
    source.mkdir()
    (source / "main.tf").write_text(SECRET_ONLY)
    return source


def test_a_configuration_without_a_proxy_is_told_what_the_twin_follows(
    terraform_tools: TerraformTools, secret_only: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The log files this stack makes, by name: other stacks on the machine write theirs too.
    made: list[str] = []
    mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = mkstemp(*args, **kwargs)
        made.append(name)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    with pytest.raises(ComponentError, match=r"created 0 RDS proxies \(aws_db_proxy\)") as caught:
        _start(secret_only, variables={"name": "app-secret"})
    assert "up --handler MODULE.FUNCTION --code DIR" in str(caught.value)
    # The apply itself went well: its log, which the error does not name, is not left behind.
    logs = [name for name in made if Path(name).name.startswith("local-twin-terraform-")]
    assert logs
    assert not [name for name in logs if Path(name).exists()]


def test_a_variable_the_configuration_does_not_declare_is_refused_with_those_it_does(
    terraform_tools: TerraformTools, secret_only: Path
) -> None:
    with pytest.raises(
        ComponentError, match=r"--tf-var lambda_package: .* declares no such variable"
    ) as caught:
        _start(secret_only, variables={"name": "x", "lambda_package": "package.zip"})
    assert "its variables are: name" in str(caught.value)


def test_a_failed_apply_keeps_terraform_s_log_where_the_error_says(
    terraform_tools: TerraformTools, secret_only: Path
) -> None:
    # No value for the required variable: the apply fails.
    with pytest.raises(ComponentError, match=r"`apply` failed") as caught:
        _start(secret_only)
    message = str(caught.value)
    assert "No value for required variable" in message
    log = Path(re.search(r"the whole output is in (\S+)", message).group(1))  # type: ignore[union-attr]
    try:
        assert log.is_file()  # the stack has stopped and removed its directory; the log stays
        assert "$ " in log.read_text()
    finally:
        log.unlink(missing_ok=True)


def test_tflocal_remains_a_way_and_its_banner_stays_out_of_errors(
    terraform_tools: TerraformTools, secret_only: Path
) -> None:
    if shutil.which("tflocal") is None:
        pytest.skip("tflocal is not installed (pip install 'rds-proxy-local-twin[terraform]')")
    with pytest.raises(ComponentError) as caught:
        _start(secret_only, tflocal=True)
    message = str(caught.value)
    assert "No value for required variable" in message
    assert "deprecated" not in message
    assert "=====" not in message
    Path(re.search(r"the whole output is in (\S+)", message).group(1)).unlink()  # type: ignore[union-attr]
