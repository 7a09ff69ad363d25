"""Terraform for the local twin: find it and the AWS provider offline, and run a configuration.

Against the local AWS API emulator, plain `terraform` runs with the AWS provider's own endpoint
configuration (AWS_ENDPOINT_URL in its environment, which the provider honours for every service);
`tflocal` (terraform-local, deprecated by its authors) remains an option and is never needed.
The kit never requires Terraform. When the binary or the hashicorp/aws provider cannot be had,
`find_terraform` says exactly why (TerraformUnavailable) and the Terraform stages skip with that
reason. Providers come from Terraform's own mechanisms: a CLI configuration with
`provider_installation` (TF_CLI_CONFIG_FILE or ~/.terraformrc), the implied local mirror
directories, or TF_PLUGIN_DIR, which the kit passes as `terraform init -plugin-dir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulator.errors import ComponentError
from emulator.paths import TERRAFORM_DIR

COMPONENT = "Terraform"
AWS_PROVIDER = Path("registry.terraform.io") / "hashicorp" / "aws"
PROVIDER_HINT = (
    "make the hashicorp/aws provider available: network access to the registry, a CLI configuration "
    "with a filesystem_mirror, or TF_PLUGIN_DIR=<a directory laid out as "
    "registry.terraform.io/hashicorp/aws/...>"
)
INSTALL_HINT = (
    f"install Terraform >= 1.11 (https://developer.hashicorp.com/terraform/install) and {PROVIDER_HINT}"
)
# terraform init may wait on an unreachable registry for a long time; past this it is unavailable.
INIT_TIMEOUT = 180
# An apply or destroy against the local AWS emulator takes about two minutes (the provider polls).
COMMAND_TIMEOUT = 900
# How long an interrupted Terraform gets to finish its call in flight and write its state.
INTERRUPT_GRACE = 120


# tflocal prints this on every run since it was deprecated; it must never reach the kit's messages.
_TFLOCAL_BANNER = re.compile(r"^=+\n.*?^Continuing with 'tflocal'\.\.\.\n+", re.DOTALL | re.MULTILINE)
# What a configuration's directory holds that is Terraform's working state, not the configuration.
_NOT_COPIED = shutil.ignore_patterns(".terraform", "*.tfstate", "*.tfstate.*", ".terraform.lock.hcl", ".git")
_VARIABLE = re.compile(r'^\s*variable\s+"([^"]+)"', re.MULTILINE)


def without_tflocal_banner(text: str) -> str:
    return _TFLOCAL_BANNER.sub("", text)


def declared_variables(source: Path) -> list[str]:
    """The variables a configuration's root module declares (its *.tf files' variable blocks)."""
    names: list[str] = []
    for path in sorted(source.glob("*.tf")):
        names += _VARIABLE.findall(path.read_text(errors="replace"))
    for path in sorted(source.glob("*.tf.json")):
        with contextlib.suppress(ValueError, AttributeError):
            names += list(json.loads(path.read_text()).get("variable", {}))
    return sorted(set(names))


class TerraformUnavailable(ComponentError):
    """Terraform or its AWS provider cannot be had here; the message says which and how to get it."""

    def __init__(self, problem: str, hint: str = "") -> None:
        super().__init__("Terraform", problem, hint)


def _implied_mirrors() -> list[Path]:
    """The directories Terraform searches by itself for providers (its "implied local mirrors")."""
    home = Path.home()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    dirs = [home / ".terraform.d" / "plugins", data_home / "terraform" / "plugins"]
    data_dirs = os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share"
    dirs += [Path(d) / "terraform" / "plugins" for d in data_dirs.split(":") if d]
    return dirs


def _cli_config(env: Mapping[str, str]) -> Path | None:
    named = env.get("TF_CLI_CONFIG_FILE")
    path = Path(named) if named else Path.home() / ".terraformrc"
    return path if path.is_file() else None


@dataclass(frozen=True)
class TerraformTools:
    terraform: str
    tflocal: str | None
    # Extra `terraform init` arguments (-plugin-dir) and where the AWS provider comes from.
    init_args: tuple[str, ...]
    provider_source: str
    # Whether terraform init may need the registry (no local source was found).
    needs_registry: bool

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        # A TF_CLI_CONFIG_FILE naming a missing file only earns a warning on every command.
        if env.get("TF_CLI_CONFIG_FILE") and _cli_config(env) is None:
            env.pop("TF_CLI_CONFIG_FILE")
        env["TF_IN_AUTOMATION"] = "1"
        env["CHECKPOINT_DISABLE"] = "1"
        env["TF_CMD"] = self.terraform  # the binary tflocal runs
        return env


def find_terraform(env: Mapping[str, str] | None = None) -> TerraformTools:
    """Terraform, tflocal and a source of the AWS provider, or TerraformUnavailable saying why."""
    env = dict(os.environ if env is None else env)
    path = env.get("PATH")
    terraform = env.get("TERRAFORM") or shutil.which("terraform", path=path)
    if not terraform:
        raise TerraformUnavailable(f"no terraform binary on PATH: {INSTALL_HINT}")
    tflocal = shutil.which("tflocal", path=path)
    plugin_dir = env.get("TF_PLUGIN_DIR")
    if plugin_dir:
        if not (Path(plugin_dir) / AWS_PROVIDER).is_dir():
            raise TerraformUnavailable(
                f"TF_PLUGIN_DIR={plugin_dir} has no {AWS_PROVIDER} (expected the filesystem-mirror layout)"
            )
        return TerraformTools(
            terraform, tflocal, (f"-plugin-dir={plugin_dir}",), f"-plugin-dir {plugin_dir}", False
        )
    config = _cli_config(env)
    if config is not None and "provider_installation" in config.read_text():
        return TerraformTools(terraform, tflocal, (), f"provider_installation in {config}", False)
    for mirror in _implied_mirrors():
        if (mirror / AWS_PROVIDER).is_dir():
            return TerraformTools(terraform, tflocal, (), f"implied local mirror {mirror}", False)
    return TerraformTools(terraform, tflocal, (), "the Terraform registry", True)


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class TerraformWorkspace:
    """A copy of a Terraform configuration in a directory of its own, with its own state.

    The source directory stays untouched (no .terraform, lock file or state in your tree): the
    whole directory is copied (modules and files beside the .tf files too), and with
    link_siblings the entries beside it are linked beside the copy, so `${path.module}/../src`
    still finds your code. Every command's output goes to the log (terraform.log in the
    workspace unless log_path says where).
    """

    def __init__(
        self,
        tools: TerraformTools,
        workdir: Path,
        *,
        source: Path = TERRAFORM_DIR,
        env: Mapping[str, str] | None = None,
        variables: Mapping[str, str] | None = None,
        local: bool = True,
        tflocal: bool = False,
        command_timeout: float = COMMAND_TIMEOUT,
        log_path: Path | None = None,
        link_siblings: bool = False,
    ) -> None:
        self.tools = tools
        # True: against the env's AWS_ENDPOINT_URL (the local AWS emulator), which the AWS
        # provider honours. False: whatever the AWS provider finds (real AWS).
        self.local = local
        # Run apply and destroy through tflocal (terraform-local) instead of plain terraform.
        self.tflocal = tflocal
        self.command_timeout = command_timeout
        self.source = source
        self.dir = workdir
        self.variables = dict(variables or {})
        self.env = tools.environment(os.environ if env is None else env)
        self.log_path = log_path or workdir / "terraform.log"
        shutil.copytree(source, workdir, ignore=_NOT_COPIED, dirs_exist_ok=True, symlinks=True)
        if link_siblings:
            for sibling in source.resolve().parent.iterdir():
                link = workdir.parent / sibling.name
                if sibling.resolve() != source.resolve() and not link.exists():
                    link.symlink_to(sibling)

    def _run(self, args: Sequence[str], *, local: bool = False, timeout: float | None = None) -> str:
        if local and not self.tools.tflocal:
            raise ComponentError(
                COMPONENT,
                "tflocal is not installed (asked for instead of plain terraform)",
                "pip install 'rds-proxy-local-twin[terraform]', or leave tflocal out: plain terraform works",
            )
        binary = self.tools.tflocal if local else self.tools.terraform
        assert binary is not None
        command = [binary, *args]
        limit = self.command_timeout if timeout is None else timeout
        # A session of its own: a Ctrl+C in the terminal reaches the kit, which stops Terraform
        # gracefully (SIGINT, then waits for it to write its state) instead of killing it mid-apply.
        process = subprocess.Popen(
            command,
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired as exc:
            stdout, stderr = _interrupt(process)
            self._log(command, stdout, stderr)
            raise ComponentError(
                COMPONENT, f"`{args[0]}` did not finish within {limit:.0f} s", f"see {self.log_path}"
            ) from exc
        except BaseException:
            stdout, stderr = _interrupt(process)
            self._log(command, stdout, stderr)
            raise
        self._log(command, stdout, stderr)
        if process.returncode != 0:
            output = without_tflocal_banner(stdout + stderr)
            raise ComponentError(
                COMPONENT,
                f"`{args[0]}` failed (exit {process.returncode}):\n{tail(output)}",
                f"the whole output is in {self.log_path}",
            )
        return without_tflocal_banner(stdout)

    def _log(self, command: Sequence[str], stdout: str, stderr: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            log.write(f"$ {' '.join(command)}\n{stdout}{stderr}\n")

    def var_args(self) -> list[str]:
        return [f"-var={name}={value}" for name, value in self.variables.items()]

    def init(self) -> None:
        try:
            self._run(
                ["init", "-input=false", "-no-color", *self.tools.init_args],
                timeout=INIT_TIMEOUT if self.tools.needs_registry else None,
            )
        except ComponentError as exc:
            if self.tools.needs_registry:
                # Nothing local to install from and the registry did not answer: not a kit failure.
                # Terraform's words first, then one hint: what to make available, and where its
                # whole output is.
                problem = "the hashicorp/aws provider could not be installed from the registry: "
                problem += exc.problem
                hint = f"{PROVIDER_HINT} (Terraform's whole output: {self.log_path})"
                raise TerraformUnavailable(problem, hint) from exc
            raise

    def validate(self) -> None:
        self._run(["validate", "-no-color"])

    def test(self) -> str:
        return self._run(["test", "-no-color", *self.var_args()])

    def apply(self) -> None:
        """`terraform apply` (against the env's AWS_ENDPOINT_URL when local), or `tflocal apply`."""
        self._run(
            ["apply", "-input=false", "-auto-approve", "-no-color", *self.var_args()], local=self.tflocal
        )

    def destroy(self) -> None:
        self._run(
            ["destroy", "-input=false", "-auto-approve", "-no-color", *self.var_args()], local=self.tflocal
        )

    def state(self) -> dict[str, Any]:
        """Terraform's state as `terraform show -json` gives it (every resource, module by module)."""
        shown: dict[str, Any] = json.loads(self._run(["show", "-json", "-no-color"]))
        return shown

    def state_list(self) -> list[str]:
        """The resources Terraform's state still holds (what a failed destroy left behind)."""
        return self._run(["state", "list", "-no-color"]).split()

    def outputs(self) -> dict[str, Any]:
        raw: dict[str, dict[str, Any]] = json.loads(self._run(["output", "-json", "-no-color"]))
        return {name: entry["value"] for name, entry in raw.items()}


def _interrupt(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Stop Terraform as Ctrl+C would: it finishes the call in flight and writes its state."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=INTERRUPT_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


def fmt_check(tools: TerraformTools, directory: Path = TERRAFORM_DIR) -> str:
    """`terraform fmt -check -recursive`: the files that are not in canonical format, or ''."""
    result = subprocess.run(
        [tools.terraform, "fmt", "-check", "-recursive", "-no-color", str(directory)],
        env=tools.environment(os.environ),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return ""
    return (result.stdout + result.stderr).strip() or f"terraform fmt exited {result.returncode}"
