"""IAM auth tokens checked the way RDS Proxy checks them, against tokens boto3 really makes."""

from __future__ import annotations

import datetime
from typing import Any

import boto3
import pytest

from emulator.rdsproxy.auth import TokenRejected, verify_iam_token

pytestmark = pytest.mark.unit

KEY, SECRET = "AKIAUNITTESTEXAMPLE0", "unit-test-secret-key"


def _token(**overrides: Any) -> str:
    rds = boto3.session.Session().client(
        "rds", region_name="eu-west-1", aws_access_key_id=KEY, aws_secret_access_key=SECRET
    )
    args = {"DBHostname": "proxy.local", "Port": 5432, "DBUsername": "app_user", **overrides}
    return str(rds.generate_db_auth_token(**args))


def _verify(token: str, **overrides: Any) -> None:
    args: dict[str, Any] = {
        "user": "app_user",
        "endpoint_hosts": ["proxy.local"],
        "port": 5432,
        "region": "eu-west-1",
        "secret_for_key": {KEY: SECRET}.get,
    }
    args.update(overrides)
    verify_iam_token(token, **args)


def test_a_boto3_token_is_valid() -> None:
    _verify(_token())


@pytest.mark.parametrize(
    ("token_args", "verify_args", "why"),
    [
        ({}, {"user": "other"}, "DBUser"),
        ({}, {"port": 6432}, "not this proxy endpoint"),
        ({}, {"endpoint_hosts": ["elsewhere"]}, "not this proxy endpoint"),
        ({}, {"secret_for_key": {KEY: "wrong"}.get}, "signature does not match"),
        ({}, {"secret_for_key": {}.get}, "unknown access key"),
        ({}, {"now": "in 16 minutes"}, "expired"),
        # Signed correctly, but for another region than the proxy's.
        ({}, {"region": "us-east-1"}, "signed for region 'eu-west-1'"),
    ],
)
def test_tokens_that_do_not_fit_are_rejected_with_the_reason(
    token_args: dict[str, Any], verify_args: dict[str, Any], why: str
) -> None:
    token = _token(**token_args)
    if verify_args.get("now") == "in 16 minutes":  # relative to when the token is made, not collected
        verify_args = {"now": datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=16)}
    with pytest.raises(TokenRejected, match=why):
        _verify(token, **verify_args)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not a token",
        "host:5432/?Action=connect",
        "host:x/?a=b",
        "proxy.local:5432/?Action=connect&Action=connect",
    ],
)
def test_garbage_is_rejected(token: str) -> None:
    with pytest.raises(TokenRejected):
        _verify(token)


def test_a_changed_parameter_breaks_the_signature() -> None:
    token = _token().replace("X-Amz-Expires=900", "X-Amz-Expires=899")
    with pytest.raises(TokenRejected, match="signature does not match"):
        _verify(token)
