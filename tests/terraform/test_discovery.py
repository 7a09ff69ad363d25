"""Where the kit finds Terraform's AWS provider, and the reason it gives when it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.terraform.workspace import (
    AWS_PROVIDER,
    TerraformUnavailable,
    TerraformWorkspace,
    find_terraform,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home and data directories: no CLI configuration, no implied mirrors."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_DATA_DIRS", str(tmp_path / "share"))
    return tmp_path / "home"


def _mirror(root: Path) -> Path:
    (root / AWS_PROVIDER / "5.100.0" / "linux_amd64").mkdir(parents=True)
    return root


def test_without_terraform_the_reason_says_how_to_get_it(home: Path) -> None:
    with pytest.raises(TerraformUnavailable, match=r"no terraform binary on PATH.*install Terraform"):
        find_terraform({"PATH": str(home)})


def test_a_plugin_dir_is_passed_to_init(home: Path, tmp_path: Path) -> None:
    mirror = _mirror(tmp_path / "tf-plugins")
    tools = find_terraform({"TERRAFORM": "/opt/terraform", "TF_PLUGIN_DIR": str(mirror)})
    assert tools.init_args == (f"-plugin-dir={mirror}",)
    assert not tools.needs_registry


def test_a_plugin_dir_without_the_aws_provider_is_refused(home: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TerraformUnavailable, match=r"has no registry.terraform.io/hashicorp/aws"):
        find_terraform({"TERRAFORM": "/opt/terraform", "TF_PLUGIN_DIR": str(tmp_path / "empty")})


def test_a_cli_configuration_with_provider_installation_is_terraform_s_business(
    home: Path, tmp_path: Path
) -> None:
    config = tmp_path / "terraformrc"
    config.write_text('provider_installation {\n  filesystem_mirror { path = "/m" }\n}\n')
    tools = find_terraform({"TERRAFORM": "/opt/terraform", "TF_CLI_CONFIG_FILE": str(config)})
    assert tools.init_args == ()
    assert tools.provider_source == f"provider_installation in {config}"
    assert not tools.needs_registry


def test_an_implied_local_mirror_is_found(home: Path) -> None:
    _mirror(home / ".terraform.d" / "plugins")
    tools = find_terraform({"TERRAFORM": "/opt/terraform"})
    assert tools.provider_source.startswith("implied local mirror")
    assert not tools.needs_registry


def test_with_no_local_source_the_registry_is_needed(home: Path) -> None:
    tools = find_terraform({"TERRAFORM": "/opt/terraform", "TF_CLI_CONFIG_FILE": str(home / "missing")})
    assert tools.needs_registry
    # A CLI configuration that does not exist is dropped rather than warned about on every command.
    assert "TF_CLI_CONFIG_FILE" not in tools.environment({"TF_CLI_CONFIG_FILE": str(home / "missing")})


def test_a_provider_the_registry_cannot_give_is_named_without_asking_to_install_terraform(
    home: Path, tmp_path: Path
) -> None:
    # A terraform that is there but whose init fails, as without the registry and any mirror.
    terraform = tmp_path / "terraform"
    terraform.write_text("#!/bin/sh\necho 'Failed to query available provider packages' >&2\nexit 1\n")
    terraform.chmod(0o755)
    tools = find_terraform({"TERRAFORM": str(terraform), "TF_CLI_CONFIG_FILE": str(home / "missing")})
    source = tmp_path / "infra"
    source.mkdir()
    workspace = TerraformWorkspace(tools, tmp_path / "work", source=source)

    with pytest.raises(TerraformUnavailable) as raised:
        workspace.init()

    message = str(raised.value)
    assert "the hashicorp/aws provider could not be installed from the registry" in message
    assert "Failed to query available provider packages" in message  # Terraform's own words
    assert "install Terraform" not in message
    # One hint, on a line of its own: what to do, and where Terraform's whole output is.
    assert message.count("how to fix:") == 1
    hint = message.split("\n  how to fix: ")[1]
    assert "TF_PLUGIN_DIR" in hint
    assert str(workspace.log_path) in hint
