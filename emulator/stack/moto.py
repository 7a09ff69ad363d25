"""The local AWS API: moto in server mode, in-process, on a loopback port."""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any

import boto3

from emulator.errors import ComponentError
from emulator.net import LOOPBACK
from emulator.stack.moto_quirks import apply_moto_quirk_fixes
from emulator.wait import wait_until

COMPONENT = "AWS API emulator (moto server)"
INSTALL_HINT = "pip install 'moto[server]'"
# Access key ids have AKIA + 16 characters; the secret key is random per stack so IAM tokens are
# really signed and checked, never accepted for their shape alone.
ACCESS_KEY_ID = "AKIALOCALTWINEXAMPLE"


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    region: str


class AwsEmulator:
    """moto's ThreadedMotoServer with the settings the kit's Terraform and handler need."""

    def __init__(self, region: str = "us-east-1") -> None:
        self.credentials = AwsCredentials(ACCESS_KEY_ID, secrets.token_urlsafe(30), region)
        self._server: Any = None
        self.endpoint_url = ""

    def start(self, timeout: float = 30) -> None:
        # Terraform attaches AWS managed policies to the proxy and Lambda roles; moto only knows them
        # when asked to load them, and reads this when its IAM backend is first created.
        os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
        try:
            from moto.server import ThreadedMotoServer  # noqa: PLC0415 - heavy import, only when started
        except ImportError as exc:
            raise ComponentError(
                COMPONENT, f"moto's server mode is not installed ({exc})", INSTALL_HINT
            ) from exc
        apply_moto_quirk_fixes()
        # One log line per request would drown everything else.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        wait_until(self._ready, component=COMPONENT, timeout=timeout, hint=INSTALL_HINT)

    def _ready(self) -> bool:
        self.client("sts").get_caller_identity()
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self, service: str, region: str | None = None) -> Any:
        """A boto3 client pointed at the emulator, with the stack's credentials."""
        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint_url,
            region_name=region or self.credentials.region,
            aws_access_key_id=self.credentials.access_key_id,
            aws_secret_access_key=self.credentials.secret_access_key,
        )

    def function_package(self, name: str, region: str) -> bytes:
        """The deployment package a function was created or last updated with.

        In AWS, get_function's Code.Location is a presigned URL of it; moto's points nowhere, so
        the bytes come from its in-process backend, which holds what the apply uploaded (a file,
        an S3 object or a ZipFile).
        """
        from moto.awslambda.models import lambda_backends  # noqa: PLC0415 - only with moto's server

        account = self.client("sts").get_caller_identity()["Account"]
        code: bytes = lambda_backends[account][region].get_function(name).code_bytes
        return code

    def create_db_secret(self, name: str, *, username: str, password: str) -> str:
        """The Secrets Manager secret RDS Proxy reads: {"username": ..., "password": ...}; returns its ARN."""
        answer = self.client("secretsmanager").create_secret(
            Name=name,
            SecretString=json.dumps({"username": username, "password": password}),
            Description="Database credentials for the local twin (RDS Proxy auth secret)",
        )
        return str(answer["ARN"])

    def environment(self) -> dict[str, str]:
        """What a client process needs to reach this emulator with boto3 or the AWS CLI."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.credentials.region,
            "AWS_DEFAULT_REGION": self.credentials.region,
            "AWS_ACCESS_KEY_ID": self.credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_access_key,
        }
