"""What must hold before the stage creates anything that costs money."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions

CONFIRM_FLAG = "--yes-create-billable-resources"
CONFIRM_ENV = "LOCAL_TWIN_AWS_CONFIRM"
CONFIRM_VALUE = "create-billable-resources"


class StageRefused(Exception):
    """The stage will not start; the message says what is missing and how to provide it."""


@dataclass(frozen=True)
class Identity:
    account: str
    arn: str
    region: str


def check_checkout(repo: Path, cwd: Path | None = None) -> None:
    """The stage runs the kit's tests/aws, which a checkout has and the wheel does not: refused before
    anything is deployed, not after an apply."""
    if (repo / "tests" / "aws").is_dir():
        return
    here = cwd or Path.cwd()
    if (here / "tests" / "aws").is_dir() and (here / "noxfile.py").is_file():
        # In a checkout, but the kit running is an installed copy (a wheel) without its tests.
        raise StageRefused(
            f"the kit running is the one installed under {repo}, which has no tests/aws, though this "
            "directory is a checkout of the kit: run `nox -s aws` here (it installs this checkout), "
            "or `pip install -e .` first"
        )
    raise StageRefused(
        f"it runs the kit's tests/aws, which an installed kit does not have (none under {repo}): "
        "run it from a checkout of the kit (git clone ...; nox -s aws)"
    )


def check_confirmation(confirmed_by_flag: bool, env: Mapping[str, str]) -> None:
    if confirmed_by_flag or env.get(CONFIRM_ENV) == CONFIRM_VALUE:
        return
    raise StageRefused(
        "the AWS stage creates billable resources in your account and needs an explicit yes: pass "
        f"{CONFIRM_FLAG} (nox -s aws -- {CONFIRM_FLAG}) or set {CONFIRM_ENV}={CONFIRM_VALUE}"
    )


def check_credentials(session: Any) -> Identity:
    """Credentials and a region, and that AWS accepts them (sts:GetCallerIdentity)."""
    if session.get_credentials() is None:
        raise StageRefused(
            "no AWS credentials found: set AWS_PROFILE (a profile in ~/.aws), or AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary credentials), or run "
            "where an instance, task or OIDC role provides them"
        )
    region = session.region_name
    if not region:
        raise StageRefused("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or a profile's region)")
    try:
        identity = session.client("sts", region_name=region).get_caller_identity()
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        # No answer at all is not a refusal: the credentials were never judged.
        raise StageRefused(
            f"AWS could not be reached to check the credentials (sts:GetCallerIdentity in {region}): "
            f"{exc}; check the network, a proxy (HTTPS_PROXY) or AWS_ENDPOINT_URL"
        ) from exc
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise StageRefused(f"AWS did not accept the credentials (sts:GetCallerIdentity): {exc}") from exc
    return Identity(account=str(identity["Account"]), arn=str(identity["Arn"]), region=region)


def aws_session(env: Mapping[str, str]) -> Any:
    """The session the stage checks, as Terraform's AWS provider will see the same environment."""
    return boto3.session.Session(
        profile_name=env.get("AWS_PROFILE") or None,
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
    )
