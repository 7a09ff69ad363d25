"""Malformed authentication messages and a token signed for another region: each refused with a FATAL
in RDS Proxy's way, and none of them a Python traceback in the proxy's log.

PostgreSQL answers a malformed SASL message with FATAL 08P01 ("malformed SASLInitialResponse
message", "invalid SCRAM response"); a refusal as a failed password (28P01) is RDS Proxy's other way
of saying no. A crash of the login code is neither: the client sees the connection drop unexplained.
"""

from __future__ import annotations

import base64
import struct
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import boto3
import psycopg
import pytest

from emulator.rdsproxy import texts
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend, Frontend

from .helpers import ProxyUnderTest, RawClient

pytestmark = pytest.mark.integration

REFUSED = ("08P01", "28P01")
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"


@pytest.fixture
def scram_proxy(make_proxy: Callable[..., ProxyUnderTest]) -> ProxyUnderTest:
    return make_proxy(
        iam_auth="DISABLED", require_tls=False, client_password_auth_type="POSTGRES_SCRAM_SHA_256"
    )


@pytest.fixture
def log_of_this_test(scram_proxy: ProxyUnderTest) -> Callable[[], str]:
    """What the proxy logs from now on (its log is shared by the tests of the module)."""
    path: Path = scram_proxy.emulator.log_path
    start = path.stat().st_size
    return lambda: path.read_bytes()[start:].decode(errors="replace")


def _asked_for_sasl(proxy: ProxyUnderTest) -> RawClient:
    client = RawClient(proxy.host, proxy.port)
    client.sock.settimeout(5)
    client.send(m.startup_message({"user": proxy.user, "database": proxy.database}))
    request = client.read_frame()
    assert (request.kind, m.auth_code(request.body)) == (Backend.AUTHENTICATION, m.AUTH_SASL)
    return client


def _refused(client: RawClient) -> dict[str, str]:
    """The FATAL that ends the login, and then the end of the connection."""
    try:
        error = client.expect_error()
    except ConnectionResetError:
        client.close()
        raise AssertionError("the proxy closed the connection without a word") from None
    except TimeoutError:
        client.close()
        raise AssertionError("no FATAL within 5 s: the proxy went on with the exchange") from None
    assert client.closed()
    return error


def _no_traceback(log: str) -> None:
    assert "Traceback" not in log, log[log.index("Traceback") :][:3000]


def test_a_truncated_sasl_initial_response_is_refused_with_a_fatal(
    scram_proxy: ProxyUnderTest, log_of_this_test: Callable[[], str]
) -> None:
    client = _asked_for_sasl(scram_proxy)
    # The mechanism name, then only half of the 4-byte length of the data that should follow.
    client.send(m.frame(Frontend.PASSWORD, b"SCRAM-SHA-256\0\0\0"))
    error = _refused(client)
    assert (error["S"], error["C"] in REFUSED) == ("FATAL", True), error
    _no_traceback(log_of_this_test())


@pytest.mark.parametrize(
    ("declared", "why"),
    [(100, "more data declared than the message holds"), (3, "less data declared than the message holds")],
)
def test_a_sasl_initial_response_whose_data_length_disagrees_with_its_frame_is_refused(
    scram_proxy: ProxyUnderTest, log_of_this_test: Callable[[], str], declared: int, why: str
) -> None:
    client = _asked_for_sasl(scram_proxy)
    data = f"n,,n=,r={CLIENT_NONCE}".encode()
    client.send(m.frame(Frontend.PASSWORD, b"SCRAM-SHA-256\0" + struct.pack("!i", declared) + data))
    error = _refused(client)
    assert (error["S"], error["C"] in REFUSED) == ("FATAL", True), (why, error)
    _no_traceback(log_of_this_test())


def test_a_scram_client_final_message_that_is_not_utf8_is_refused_with_a_fatal(
    scram_proxy: ProxyUnderTest, log_of_this_test: Callable[[], str]
) -> None:
    client = _asked_for_sasl(scram_proxy)
    client.send(m.sasl_initial_response("SCRAM-SHA-256", f"n,,n=,r={CLIENT_NONCE}".encode()))
    server_first = client.read_frame()
    assert m.auth_code(server_first.body) == m.AUTH_SASL_CONTINUE
    nonce = dict(part.split("=", 1) for part in server_first.body[4:].decode().split(","))["r"]
    proof = base64.b64encode(b"\0" * 32)
    client.send(m.sasl_response(b"c=biws,r=" + nonce.encode() + b"\xff\xfe,p=" + proof))
    error = _refused(client)
    assert (error["S"], error["C"] in REFUSED) == ("FATAL", True), error
    _no_traceback(log_of_this_test())


def test_an_iam_token_signed_for_another_region_is_refused(proxy: ProxyUnderTest) -> None:
    # The proxy's own region is the stack's; SigV4 binds a signature to its region, so a token that
    # verifies only with its own (other) region in the credential scope is not for this proxy.
    aws = proxy.stack.aws.credentials
    other_region = "eu-west-3" if aws.region != "eu-west-3" else "ap-south-1"
    rds = boto3.session.Session().client(
        "rds",
        region_name=other_region,
        aws_access_key_id=aws.access_key_id,
        aws_secret_access_key=aws.secret_access_key,
    )
    token = rds.generate_db_auth_token(DBHostname=proxy.host, Port=proxy.port, DBUsername=proxy.user)
    assert f"/{other_region}/rds-db/" in urllib.parse.unquote(token)
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(**proxy.conninfo(password=token)).close()
    assert texts.IAM_FAILED.format(user=proxy.user) in str(refused.value)


@pytest.fixture
def md5_proxy(make_proxy: Callable[..., ProxyUnderTest]) -> ProxyUnderTest:
    return make_proxy(iam_auth="DISABLED", require_tls=False, client_password_auth_type="POSTGRES_MD5")


def test_an_md5_answer_that_is_not_ascii_is_a_wrong_password(md5_proxy: ProxyUnderTest) -> None:
    client = RawClient(md5_proxy.host, md5_proxy.port)
    client.sock.settimeout(5)
    client.send(m.startup_message({"user": md5_proxy.user, "database": md5_proxy.database}))
    request = client.read_frame()
    assert m.auth_code(request.body) == m.AUTH_MD5
    client.send(m.password_message("md5" + "é" * 32))
    error = _refused(client)
    assert (error["S"], error["C"]) == ("FATAL", "28P01"), error
