"""The local AWS API: moto in server mode, in a process of its own (moto_server), on a loopback port."""

from __future__ import annotations

import json
import secrets
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulator.errors import ComponentError
from emulator.net import LOOPBACK
from emulator.stack.moto_process import COMPONENT, INSTALL_HINT, MotoProcess, MotoProcessError, adopt

__all__ = ["COMPONENT", "INSTALL_HINT", "AwsCredentials", "AwsEmulator"]
# Access key ids have AKIA + 16 characters; the secret key is random per stack so IAM tokens are
# really signed and checked, never accepted for their shape alone.
ACCESS_KEY_ID = "AKIALOCALTWINEXAMPLE"


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    region: str


class AwsEmulator:
    """moto's server, in its own process, with the settings the kit's Terraform and handler need."""

    def __init__(self, region: str = "us-east-1") -> None:
        self.credentials = AwsCredentials(ACCESS_KEY_ID, secrets.token_urlsafe(30), region)
        self._process: MotoProcess | None = None
        self.endpoint_url = ""

    def start(self, timeout: float = 60) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Its process, not waiting for it: endpoint_url is known from here on."""
        if self._process is None:
            # `up` started one before its imports; otherwise one of this stack's own.
            self._process = adopt(self.credentials.region) or MotoProcess(self.credentials.region)
            self.endpoint_url = f"http://{LOOPBACK}:{self._process.endpoint_port}"

    def wait_ready(self, timeout: float = 60) -> None:
        """Until moto answers; a moto that does not is stopped."""
        assert self._process is not None, "not launched"
        try:
            self._process.port(timeout)
        except MotoProcessError as exc:
            self.stop()
            hint = INSTALL_HINT if exc.not_installed else ""
            raise ComponentError(COMPONENT, str(exc), hint) from exc

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def client(self, service: str, region: str | None = None) -> Any:
        """A boto3 client pointed at the emulator, with the stack's credentials."""
        import boto3  # noqa: PLC0415 - `up` without Terraform starts without the SDK

        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint_url,
            region_name=region or self.credentials.region,
            aws_access_key_id=self.credentials.access_key_id,
            aws_secret_access_key=self.credentials.secret_access_key,
        )

    def _ask(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self._process is not None, "not started"
        try:
            return self._process.request(op, **fields)
        except MotoProcessError as exc:
            raise ComponentError(COMPONENT, str(exc)) from exc

    def function_package(self, name: str, region: str) -> bytes:
        """The deployment package a function was created or last updated with (what the apply
        uploaded), read from moto's Lambda backend by its process."""
        account = self.client("sts").get_caller_identity()["Account"]
        with tempfile.TemporaryDirectory(prefix="local-twin-package-") as directory:
            path = Path(directory) / "package.zip"
            self._ask("function_package", account=account, region=region, name=name, path=str(path))
            return path.read_bytes()

    def follow_target_health(self, target: str, stats_url: str) -> None:
        """describe_db_proxy_targets answers for this DB instance with what the emulator whose
        /stats endpoint is stats_url sees of it (moto says AVAILABLE, whatever happens)."""
        self._ask("target_health", target=target, stats_url=stats_url)

    def forget_target_health(self, target: str) -> None:
        if self._process is not None:
            self._ask("forget_target_health", target=target)

    def create_db_secret(self, name: str, *, username: str, password: str) -> str:
        """The Secrets Manager secret RDS Proxy reads: {"username": ..., "password": ...}; returns its ARN.
        Sent to Secrets Manager's API by moto's process (moto_server), with this stack's access key."""
        answer = self._ask(
            "create_secret",
            name=name,
            secret_string=json.dumps({"username": username, "password": password}),
            description="Database credentials for the local twin (RDS Proxy auth secret)",
            # As boto3 makes one: a retried request does not create a second version.
            token=str(uuid.uuid4()),
            region=self.credentials.region,
            key=self.credentials.access_key_id,
        )
        return str(answer["arn"])

    def environment(self, region: str | None = None) -> dict[str, str]:
        """What a client process needs to reach this emulator with boto3 or the AWS CLI, in region
        (by default the one it was started for: moto serves every region)."""
        region = region or self.credentials.region
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_ACCESS_KEY_ID": self.credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_access_key,
        }
