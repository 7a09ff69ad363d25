"""`python -m emulator stage` (what `nox -s aws` runs): guards, the plan, then apply/test/destroy."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from emulator.awslambda.package import build_package
from emulator.paths import LAMBDA_DIR, REPO
from emulator.stage import compare
from emulator.stage.guards import (
    CONFIRM_FLAG,
    StageRefused,
    aws_session,
    check_checkout,
    check_confirmation,
    check_credentials,
)
from emulator.stage.plan import describe, hourly_cost, planned, variable_default
from emulator.stage.run import pytest_runner, run_stage, stage_name, stage_variables, terraform_deployment
from emulator.terraform.workspace import find_terraform


def add_parser(commands: Any) -> None:
    stage = commands.add_parser(
        "stage",
        help="the real-AWS stage (from a checkout of the kit): deploy terraform/, run tests/aws on AWS "
        "and locally, compare, destroy",
        description="Deploy the kit's Terraform into the account of the environment's credentials (a "
        "unique name prefix, tagged), run tests/aws against it and against the local twin, write the "
        "comparison report, and destroy everything, also after failures, Ctrl+C and SIGTERM. Arguments "
        "after -- go to pytest. It needs a checkout of the kit (tests/aws is not in the wheel).",
    )
    stage.add_argument(
        CONFIRM_FLAG,
        dest="confirmed",
        action="store_true",
        help="create billable resources (or set LOCAL_TWIN_AWS_CONFIRM=create-billable-resources)",
    )
    stage.add_argument(
        "--results",
        type=Path,
        default=Path("build/stage"),
        help="where each run keeps its outputs, figures and comparison (default: %(default)s/<name>)",
    )
    stage.add_argument(
        "--no-local",
        action="store_true",
        help="run the AWS target only (no local twin, no comparison beside it)",
    )
    stage.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: passed to pytest")


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    try:
        check_checkout(REPO)
        check_confirmation(args.confirmed, env)
        identity = check_credentials(aws_session(env))
    except StageRefused as refusal:
        print(f"error: the AWS stage will not start: {refusal}", flush=True)
        return 2
    tools = find_terraform(env)
    endpoint = env.get("AWS_ENDPOINT_URL")
    name = stage_name()
    results = args.results.resolve() / name
    instance_class = variable_default("db_instance_class")
    storage = int(variable_default("db_allocated_storage"))
    print(f"AWS account {identity.account} as {identity.arn}, region {identity.region}", flush=True)
    if endpoint:
        # The stage's offline tests point it at an AWS API emulator; nothing there costs money.
        note = "AWS_ENDPOINT_URL: an emulator, not AWS; terraform applies there"
        print(f"AWS API     {endpoint} ({note})", flush=True)
    cost = hourly_cost(instance_class, storage)
    # What the apply below will create, judged with the variables it will get.
    resources, undecided = planned(stage_variables(name, results / "lambda-package.zip", identity.region))
    print(describe(resources, cost, region=identity.region, name_prefix=name, only_if=undecided), flush=True)
    package = build_package(
        results / "lambda-package.zip",
        # An emulator never runs the uploaded code; AWS needs the drivers for its runtime.
        with_dependencies=not endpoint,
        extra_requirements=[LAMBDA_DIR / "probe-requirements.txt"],
    )
    deployment = terraform_deployment(
        results / "terraform",
        stage_variables(name, package, identity.region),
        tools=tools,
        local=bool(endpoint),
        env=env,
    )
    pytest_args = [arg for arg in args.pytest_args if arg != "--"]
    if args.no_local:
        pytest_args = ["-m", "aws", *pytest_args]
    code = run_stage(deployment, pytest_runner(results, pytest_args, env=env))
    if (results / "local.json").exists() or (results / "aws.json").exists():
        report = compare.write_report(results)
        print(f"Comparison written to {report}", flush=True)
    print(f"The stage's files: {results}", flush=True)
    return code
