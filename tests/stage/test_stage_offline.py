"""`python -m emulator stage` end to end, with the AWS API emulator standing in for AWS.

The stage runs as users run it, in a process of its own, with AWS_ENDPOINT_URL pointing at the
emulator (terraform applies there). Two runs side by side, each with its own name prefix:
- the AWS-target tests that can work against an emulator (`deployed`: what was deployed, read back
  through the AWS APIs) pass, and the stage destroys;
- a scenario that needs code running in Lambda, which the emulator cannot run, fails: an injected
  failure after a real apply. The stage still destroys, and exits with the tests' failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from emulator.paths import REPO
from emulator.stack.moto import AwsEmulator
from emulator.stage.guards import CONFIRM_FLAG
from emulator.terraform.workspace import TerraformTools

pytestmark = [
    pytest.mark.terraform,
    pytest.mark.integration,
    # The failing run's invocation makes moto (in this process) try Docker, and leave a socket and a
    # `docker` process behind when no engine answers: moto's leak, not the kit's.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
STAGE_TIMEOUT = 900


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsEmulator]:
    emulator = AwsEmulator()
    emulator.start()
    yield emulator
    emulator.stop()


def _stage(aws: AwsEmulator, results: Path, pytest_args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("AWS_")},
        **aws.environment(),
        "AWS_REGION": aws.credentials.region,
    }
    command = [sys.executable, "-m", "emulator", "stage", CONFIRM_FLAG, "--no-local"]
    command += ["--results", str(results)]
    return subprocess.run(
        [*command, "--", *pytest_args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=STAGE_TIMEOUT,
        check=False,
    )


def _vpcs(aws: AwsEmulator) -> set[str]:
    return {v["VpcId"] for v in aws.client("ec2").describe_vpcs()["Vpcs"] if not v.get("IsDefault")}


@pytest.fixture(scope="module")
def vpcs_before(aws: AwsEmulator) -> set[str]:
    """The VPCs there before the stage ran: moto's backends are the process's, shared with every
    other test's moto server, whose resources may still be there."""
    return _vpcs(aws)


@pytest.fixture(scope="module")
def runs(
    terraform_tools: TerraformTools,
    aws: AwsEmulator,
    vpcs_before: set[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, subprocess.CompletedProcess[str]]:
    results = tmp_path_factory.mktemp("stage")
    arguments = {"passing": ["-m", "deployed"], "failing": ["-m", "aws", "-k", "handler"]}
    with ThreadPoolExecutor(len(arguments)) as pool:
        futures = {name: pool.submit(_stage, aws, results / name, args) for name, args in arguments.items()}
        return {name: future.result() for name, future in futures.items()}


def _name(run: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"with the name prefix (twin-stage-[0-9a-f]+)", run.stdout)
    assert found is not None, run.stdout + run.stderr
    return found[1]


def _left_behind(aws: AwsEmulator, name: str) -> list[str]:
    """The run's proxies, database instances and functions that still exist."""
    rds, functions = aws.client("rds"), aws.client("lambda")
    left: list[Any] = [p["DBProxyName"] for p in rds.describe_db_proxies()["DBProxies"]]
    left += [i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]]
    left += [f["FunctionName"] for f in functions.list_functions()["Functions"]]
    return [str(item) for item in left if str(item).startswith(name)]


def _destroyed_after(
    run: subprocess.CompletedProcess[str], aws: AwsEmulator, *, code: int, summary: str
) -> None:
    """The run ended with `code` and pytest's `summary`, and left none of its resources behind."""
    assert run.returncode == code, run.stdout[-4000:] + run.stderr[-2000:]
    assert re.search(rf"\b{summary}\b", run.stdout), run.stdout[-3000:]
    assert "Destroyed." in run.stdout
    assert _left_behind(aws, _name(run)) == []


def test_the_stage_prints_its_plan_applies_runs_the_aws_tests_and_destroys(
    runs: dict[str, subprocess.CompletedProcess[str]], aws: AwsEmulator
) -> None:
    run = runs["passing"]
    assert "an emulator, not AWS" in run.stdout
    assert "aws_db_proxy.this" in run.stdout
    assert re.search(r"total\s+\$0\.\d+/h", run.stdout)
    _destroyed_after(run, aws, code=0, summary="2 passed")


def test_a_failure_after_the_apply_still_destroys_and_fails_the_stage(
    runs: dict[str, subprocess.CompletedProcess[str]], aws: AwsEmulator
) -> None:
    _destroyed_after(runs["failing"], aws, code=1, summary="1 failed")


def test_the_stages_vpcs_are_gone_too(
    runs: dict[str, subprocess.CompletedProcess[str]], aws: AwsEmulator, vpcs_before: set[str]
) -> None:
    # Resources without the name prefix in their identifiers: no VPC the stage made stays.
    assert all(run.returncode in (0, 1) for run in runs.values())
    assert _vpcs(aws) - vpcs_before == set()
