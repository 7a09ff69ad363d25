"""`up` runs a user's project, examples/orders-service, as its authors start it: in the background
with its code and schema, or with its Terraform, then boto3 from here with only the env file.

The project's own test suite (examples/orders-service/tests) is on the kit's pytest plugin; these
are the kit's tests of `up` on a project that was not written for it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from emulator.paths import REPO
from emulator.terraform.workspace import TerraformUnavailable, find_terraform
from emulator.wait import wait_until  # the kit's readiness check with a deadline

PROJECT = REPO / "examples" / "orders-service"
READY_SECONDS = 420  # a Terraform apply against the local AWS API takes about two minutes


class Twin:
    """`python -m emulator up` in the background; its env file is what another shell gets."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.env_file = directory / "twin.env"
        self.log = directory / "up.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "emulator", "up", "--env-file", str(self.env_file), *args],
                cwd=PROJECT,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> dict[str, str]:
        wait_until(
            self.env_file.exists,
            component="the twin",
            timeout=READY_SECONDS,
            alive=lambda: None if self.process.poll() is None else self.log.read_text(),
        )
        return dict(line.split("=", 1) for line in self.env_file.read_text().splitlines() if "=" in line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=60)
        assert self.process.returncode == 0, self.log.read_text()


def _lambda(env: dict[str, str]) -> Any:
    """boto3 as the service's code makes it, configured by the env file only."""
    session = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    return session.client("lambda", endpoint_url=env["AWS_ENDPOINT_URL_LAMBDA"])


def _invoke(client: Any, name: str, event: dict[str, Any]) -> Any:
    answer = client.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    payload = json.loads(answer["Payload"].read())
    assert "FunctionError" not in answer, payload
    return payload


@pytest.fixture
def from_code(tmp_path: Path) -> Iterator[dict[str, str]]:
    twin = Twin(
        tmp_path,
        "--function-name", "orders-api",
        "--handler", "orders.handler",
        "--code", "function",
        "--init-sql", "schema",
        # The function reads DB_HOST; the twin's proxy endpoint is DB_PROXY_ENDPOINT.
        "--env", "DB_HOST=${DB_PROXY_ENDPOINT}",
    )  # fmt: skip
    try:
        yield twin.wait_ready()
    finally:
        twin.stop()


@pytest.mark.integration
def test_the_function_runs_from_its_code_with_its_schema(from_code: dict[str, str]) -> None:
    client = _lambda(from_code)
    added = _invoke(client, "orders-api", {"action": "add", "item": "tea", "quantity": 2})
    assert added == {"service": "orders", "added": {"id": 2, "item": "tea", "quantity": 2}}
    listed = _invoke(client, "orders-api", {"action": "list"})
    assert [order["item"] for order in listed["orders"]] == ["coffee", "tea"]


@pytest.fixture
def from_terraform(tmp_path: Path) -> Iterator[dict[str, str]]:
    try:
        tools = find_terraform()
    except TerraformUnavailable as exc:
        pytest.skip(f"Terraform: {exc}")
    if tools.needs_registry:
        pytest.skip("Terraform: no local source of the hashicorp/aws provider (TF_PLUGIN_DIR)")
    package = tmp_path / "orders.zip"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "emulator",
            "package",
            "--code",
            "function",
            "--handler-only",
            "--out",
            str(package),
        ],
        cwd=PROJECT,
        check=True,
        capture_output=True,
    )
    twin = Twin(
        tmp_path,
        "--terraform", "infra",
        "--tf-var", f"function_zip={package}",
        "--init-sql", "schema",
    )  # fmt: skip
    try:
        yield twin.wait_ready()
    finally:
        twin.stop()


@pytest.mark.integration
@pytest.mark.terraform
def test_terraform_applies_the_service_and_its_uploaded_code_answers(from_terraform: dict[str, str]) -> None:
    env = from_terraform
    # The applied function, by the name Terraform gave it, running the package the apply uploaded.
    assert env["LAMBDA_FUNCTION_NAMES"] == "orders-api"
    client = _lambda(env)
    configuration = client.get_function_configuration(FunctionName="orders-api")
    assert configuration["Handler"] == "orders.handler"
    # AWS's view: DB_HOST is the proxy's endpoint; the function itself runs with the local one.
    assert configuration["Environment"]["Variables"]["DB_HOST"].startswith("orders-proxy.")
    added = _invoke(client, "orders-api", {"action": "add", "item": "scone"})
    assert added["added"]["item"] == "scone"
    listed = _invoke(client, "orders-api", {"action": "list"})
    assert [order["item"] for order in listed["orders"]] == ["coffee", "scone"]
    # The database and role are the applied instance's and secret's.
    assert (env["DB_NAME"], env["DB_USER"]) == ("orders", "orders_app")
    # Terraform ran in a copy: nothing of its state lands in the project.
    assert not (PROJECT / "infra" / ".terraform").exists()
