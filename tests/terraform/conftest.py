"""Terraform stages: skipped with the reason when Terraform or its AWS provider cannot be had."""

from __future__ import annotations

import pytest

from emulator.terraform.workspace import TerraformTools, TerraformUnavailable, find_terraform


@pytest.fixture(scope="session")
def terraform_tools() -> TerraformTools:
    try:
        tools = find_terraform()
    except TerraformUnavailable as exc:
        pytest.skip(f"Terraform stage: {exc}")
    if tools.needs_registry:
        # Without a local provider source the registry would be needed, and these machines have none.
        pytest.skip(
            "Terraform stage: no local source of the hashicorp/aws provider (set TF_PLUGIN_DIR to a "
            "filesystem mirror, or configure provider_installation in your CLI configuration)"
        )
    return tools
