"""The stage's order of events: apply, run tests/aws, and destroy whatever happened in between.

Destroy runs after a passing run, a failing one, an apply that broke half-way, Ctrl+C and SIGTERM
(CI cancellations). While it runs, Ctrl+C only says to wait: Terraform runs in a session of its
own, so the terminal's signal never reaches it. A destroy that fails is reported loudly, with the
resources Terraform still holds and how to delete them.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from emulator.paths import REPO, TERRAFORM_DIR
from emulator.stage.target import OUTPUTS_ENV, RESULTS_ENV, STAGE_VARIABLES
from emulator.terraform.workspace import TerraformTools, TerraformWorkspace

# Creating an RDS instance and a proxy takes 10-20 minutes; deleting a VPC Lambda's network
# interfaces can take as long again.
AWS_COMMAND_TIMEOUT = 3600
EXIT_INTERRUPTED = 130
EXIT_DESTROY_FAILED = 3


class Deployment(Protocol):
    def apply(self) -> dict[str, Any]: ...
    def destroy(self) -> None: ...
    def leftovers(self) -> list[str]: ...
    def manual_destroy_hint(self) -> str: ...


@dataclass
class TerraformDeployment:
    """terraform/ applied in a workspace of its own, its variables in a file there, so that a
    destroy by hand needs nothing but `terraform destroy` in that directory."""

    workspace: TerraformWorkspace

    def apply(self) -> dict[str, Any]:
        self.workspace.init()
        self.workspace.apply()
        return self.workspace.outputs()

    def destroy(self) -> None:
        self.workspace.destroy()

    def leftovers(self) -> list[str]:
        try:
            return self.workspace.state_list()
        except Exception as exc:  # noqa: BLE001 - the report goes on without the list
            return [f"(could not list Terraform's state: {exc})"]

    def manual_destroy_hint(self) -> str:
        endpoint = self.workspace.env.get("AWS_ENDPOINT_URL") if self.workspace.local else None
        tool = f"AWS_ENDPOINT_URL={endpoint} terraform" if endpoint else "terraform"
        return f"cd {self.workspace.dir} && {tool} destroy"


def stage_name() -> str:
    """A name prefix of its own for every run (RDS Proxy's naming rule: see terraform/main.tf)."""
    return f"twin-stage-{secrets.token_hex(3)}"


def stage_variables(name: str, package: Path, region: str) -> dict[str, Any]:
    return {
        "name_prefix": name,
        "region": region,
        "lambda_package": str(package),
        "tags": {"local-twin-stage": name, "CreatedBy": "nox -s aws"},
        **{key: json.loads(value) for key, value in STAGE_VARIABLES.items()},
    }


def terraform_deployment(
    workdir: Path,
    variables: Mapping[str, Any],
    *,
    tools: TerraformTools,
    local: bool,
    env: Mapping[str, str],
) -> TerraformDeployment:
    workspace = TerraformWorkspace(
        tools,
        workdir,
        source=TERRAFORM_DIR,
        env=env,
        local=local,
        command_timeout=AWS_COMMAND_TIMEOUT,
    )
    (workdir / "stage.auto.tfvars.json").write_text(json.dumps(variables, indent=2))
    return TerraformDeployment(workspace)


def pytest_runner(
    results: Path, pytest_args: Sequence[str], *, env: Mapping[str, str]
) -> Callable[[Mapping[str, Any]], int]:
    """tests/aws on both targets (or what pytest_args select), the outputs handed over in a file."""

    def run(outputs: Mapping[str, Any]) -> int:
        results.mkdir(parents=True, exist_ok=True)
        outputs_file = results / "outputs.json"
        outputs_file.write_text(json.dumps(outputs, indent=2))
        command = [sys.executable, "-m", "pytest", "tests/aws", "-p", "no:cacheprovider", *pytest_args]
        print(f"$ {' '.join(command)}", flush=True)
        code = subprocess.call(
            command, cwd=REPO, env={**env, OUTPUTS_ENV: str(outputs_file), RESULTS_ENV: str(results)}
        )
        if code == 5:
            print("pytest collected no test: the stage counts that as a failure", flush=True)
        return code

    return run


def run_stage(
    deployment: Deployment,
    run_tests: Callable[[Mapping[str, Any]], int],
    *,
    say: Callable[[str], None] | None = None,
) -> int:
    """Apply, test, always destroy; the exit code of the whole (tests' own code when they ran)."""
    say = say or _say
    code = 1
    with _termination_as_interrupt():
        try:
            say("Applying terraform/ ...")
            outputs = deployment.apply()
            say("Applied. Running tests/aws ...")
            code = run_tests(outputs)
        except KeyboardInterrupt:
            say("Interrupted: destroying what was created.")
            code = EXIT_INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - whatever broke, the stack is destroyed next
            say(f"The stage failed: {exc}")
            code = 1
        finally:
            destroyed = _destroy(deployment, say)
    if not destroyed:
        return EXIT_DESTROY_FAILED if code == 0 else code
    return code


def _say(line: str) -> None:
    # Flushed at once: in CI the log is the progress bar of a run that takes half an hour.
    print(line, flush=True)


def _destroy(deployment: Deployment, say: Callable[[str], None]) -> bool:
    say("Destroying ...")
    with _interrupts_wait():
        try:
            deployment.destroy()
        except BaseException as exc:  # noqa: BLE001 - reported loudly below, never swallowed silently
            _report_destroy_failure(deployment, exc, say)
            return False
    say("Destroyed.")
    return True


def _report_destroy_failure(deployment: Deployment, exc: BaseException, say: Callable[[str], None]) -> None:
    bar = "!" * 100
    lines = [
        bar,
        "DESTROY FAILED. These resources may still exist in your account and cost money until deleted:",
        *[f"    {resource}" for resource in deployment.leftovers()],
        f"Why: {exc}",
        "Delete them by running, until it succeeds (a VPC Lambda's network interfaces can take "
        "20-40 minutes to be released):",
        f"    {deployment.manual_destroy_hint()}",
        "or by hand in the console: every resource is tagged local-twin-stage=<the run's name prefix>",
        "(Resource Groups & Tag Editor finds them all).",
        bar,
    ]
    say("\n".join(lines))


@contextmanager
def _termination_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI cancellation) takes the Ctrl+C path: destroy, then exit."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _interrupts_wait() -> Iterator[None]:
    def wait(signum: int, frame: FrameType | None) -> None:
        print("Still destroying: stopping now would leave resources behind. Please wait.", flush=True)

    previous = {sig: signal.signal(sig, wait) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
