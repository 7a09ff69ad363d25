"""Where the proxy's database credentials come from: the secret's AWSCURRENT version, read again on
schedule and when the database refuses it; or, with end-to-end IAM, a token per connection."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from emulator.rdsproxy.auth import verify_iam_token
from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.credentials import MONITOR_ROLE, IamTokens, SecretCredentials, database_credentials
from emulator.rdsproxy.proxylog import ProxyLog
from emulator.stack.moto import AwsEmulator

pytestmark = pytest.mark.unit

KEY, SECRET, REGION = "AKIACREDENTIALSTEST0", "credentials-test-secret", "eu-west-1"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[AwsEmulator]:
    # A moto server, as the stack runs it: moto's mock_aws would reset the backends that every moto
    # server in this process shares, under the other tests' stacks.
    server = AwsEmulator(REGION)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server: AwsEmulator, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    return boto3.session.Session().client("secretsmanager", region_name=REGION)


def _secret(client: Any, password: str) -> str:
    answer = client.create_secret(
        Name=f"db-{uuid.uuid4()}", SecretString=json.dumps({"username": "u", "password": password})
    )
    return str(answer["ARN"])


def _put(client: Any, arn: str, password: str) -> None:
    client.put_secret_value(SecretId=arn, SecretString=json.dumps({"username": "u", "password": password}))


def test_the_scheme_picks_the_source() -> None:
    log = ProxyLog(io.StringIO())
    assert isinstance(database_credentials(ProxyConfig(), log), SecretCredentials)
    iam = ProxyConfig(default_auth_scheme="IAM_AUTH")
    assert isinstance(database_credentials(iam, log), IamTokens)
    # IAM_AUTH is the clients' scheme too: IAM becomes required.
    assert iam.iam_auth == "REQUIRED"
    with pytest.raises(ValueError, match="default_auth_scheme must be NONE or IAM_AUTH"):
        ProxyConfig(default_auth_scheme="SECRETS")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="secret_refresh_seconds must be 0 or more"):
        ProxyConfig(secret_refresh_seconds=-1)


def test_a_new_version_is_read_when_the_refresh_is_due(aws: Any) -> None:
    arn = _secret(aws, "first")
    stream = io.StringIO()
    source = SecretCredentials(
        ProxyConfig(secret_arn=arn, region=REGION, secret_refresh_seconds=1), ProxyLog(stream)
    )

    async def scenario() -> None:
        await source.load()
        assert source.for_client("u") is not None
        assert source.for_client("other") is None
        _put(aws, arn, "second")
        await source.refresh_if_due()  # read just now: not due yet
        assert (await source.for_connection("u", "h", 1)).password == "first"
        source._read_at -= 1  # the interval passed
        await source.refresh_if_due()
        assert (await source.for_connection("u", "h", 1)).password == "second"

    asyncio.run(scenario())
    assert f"Read a new version of the secret {arn}: version {source.version_id}." in stream.getvalue()


def test_a_refused_password_reads_the_secret_again_at_most_once_a_second(aws: Any) -> None:
    arn = _secret(aws, "first")
    source = SecretCredentials(
        ProxyConfig(secret_arn=arn, region=REGION, secret_refresh_seconds=0), ProxyLog(io.StringIO())
    )

    async def scenario() -> None:
        await source.load()
        _put(aws, arn, "second")
        assert await source.refused()  # changed: worth another attempt
        assert source.for_client("u") == source.current
        assert source.current is not None
        assert source.current.password == "second"
        _put(aws, arn, "third")
        assert not await source.refused()  # within the second: no Secrets Manager call
        assert source.current.password == "second"

    asyncio.run(scenario())


def test_end_to_end_iam_signs_a_token_for_the_client_user_and_the_endpoint_dialled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    source = IamTokens(ProxyConfig(default_auth_scheme="IAM_AUTH", region=REGION))

    async def scenario() -> str:
        await source.load()
        credentials = await source.for_connection("alice", "127.0.0.1", 45001)
        assert credentials.user == "alice"
        return credentials.password

    token = asyncio.run(scenario())
    verify_iam_token(
        token,
        user="alice",
        endpoint_hosts=["127.0.0.1"],
        port=45001,
        region=REGION,
        secret_for_key={KEY: SECRET}.get,
    )
    assert source.for_client("anyone") is not None  # the database decides who may log in
    assert source.monitor_user == MONITOR_ROLE
    assert not asyncio.run(source.refused())
