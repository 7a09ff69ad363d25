"""Client authentication as RDS Proxy does it, every refusal in its words, and no database
connection opened for a login that fails."""

from __future__ import annotations

import datetime
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg2
import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from emulator.rdsproxy import texts
from emulator.rdsproxy.protocol import messages as m

from .helpers import ProxyUnderTest, RawClient

pytestmark = pytest.mark.integration


@contextmanager
def no_database_connection_opened(proxy: ProxyUnderTest) -> Iterator[None]:
    before = proxy.stats()
    yield
    after = proxy.stats()
    assert after["database_connection_requests"] == before["database_connection_requests"]
    assert after["borrows"] == before["borrows"]


def refusal(**conninfo: Any) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(**conninfo).close()
    return str(caught.value)


def test_an_iam_token_over_tls_logs_in(proxy: ProxyUnderTest) -> None:
    with proxy.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (proxy.user,)
        assert conn.info.pgconn.ssl_in_use


def test_the_proxy_certificate_verifies_with_the_stack_ca(proxy: ProxyUnderTest) -> None:
    with proxy.connect(host="localhost", sslmode="verify-full", sslrootcert=proxy.ca) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg2_the_handlers_driver_logs_in_with_a_token(proxy: ProxyUnderTest) -> None:
    conn = psycopg2.connect(**proxy.conninfo())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"user": "someone_else"}, "a token for another user"),
        ({"port": 1}, "a token for another endpoint port"),
        ({"host": "proxy.example.com"}, "a token for another host"),
    ],
)
def test_a_token_not_for_this_user_and_endpoint_is_refused(
    proxy: ProxyUnderTest, change: dict[str, Any], why: str
) -> None:
    token = proxy.token(**change)
    with no_database_connection_opened(proxy):
        message = refusal(**proxy.conninfo(password=token))
    assert texts.IAM_FAILED.format(user=proxy.user) in message, why


def test_a_tampered_token_is_refused(proxy: ProxyUnderTest) -> None:
    token = proxy.token()
    tampered = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    with no_database_connection_opened(proxy):
        message = refusal(**proxy.conninfo(password=tampered))
    assert texts.IAM_FAILED.format(user=proxy.user) in message


def _token_signed_at(proxy: ProxyUnderTest, when: datetime.datetime) -> str:
    """A token exactly as botocore makes it, but signed at another time."""
    aws = proxy.stack.aws.credentials
    auth = SigV4QueryAuth(
        Credentials(aws.access_key_id, aws.secret_access_key), "rds-db", aws.region, expires=900
    )
    query = urllib.parse.urlencode({"Action": "connect", "DBUser": proxy.user})
    request = AWSRequest(method="GET", url=f"https://{proxy.host}:{proxy.port}/?{query}")
    request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
    auth._modify_request_before_signing(request)
    canonical = auth.canonical_request(request)
    auth._inject_signature_to_request(
        request, auth.signature(auth.string_to_sign(request, canonical), request)
    )
    return str(request.url)[len("https://") :]


def test_a_token_older_than_15_minutes_is_refused(proxy: ProxyUnderTest) -> None:
    now = datetime.datetime.now(datetime.UTC)
    fresh = _token_signed_at(proxy, now - datetime.timedelta(minutes=14))
    with psycopg.connect(**proxy.conninfo(password=fresh)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    expired = _token_signed_at(proxy, now - datetime.timedelta(minutes=16))
    with no_database_connection_opened(proxy):
        assert texts.IAM_FAILED.format(user=proxy.user) in refusal(**proxy.conninfo(password=expired))


def test_a_user_without_a_secret_has_no_credentials(proxy: ProxyUnderTest) -> None:
    token = proxy.token(user="intruder")
    with no_database_connection_opened(proxy):
        message = refusal(**proxy.conninfo(user="intruder", password=token))
    assert texts.NO_CREDENTIALS.format(user="intruder") in message


def test_a_plain_connection_is_refused_when_tls_is_required(proxy: ProxyUnderTest) -> None:
    message = refusal(**proxy.conninfo(sslmode="disable"))
    assert texts.TLS_REQUIRED in message


def test_iam_over_plain_tcp_is_refused(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    proxy = make_proxy(iam_auth="REQUIRED", require_tls=False)
    with no_database_connection_opened(proxy):
        message = refusal(**proxy.conninfo(sslmode="disable"))
    assert texts.IAM_NEEDS_TLS in message


def test_failed_logins_are_counted_as_auth_failures(proxy: ProxyUnderTest) -> None:
    before = proxy.stats()["client_connections_setup_failed_auth"]
    refusal(**proxy.conninfo(password="not-a-token"))
    assert proxy.stats()["client_connections_setup_failed_auth"] == before + 1


@pytest.mark.parametrize("auth_type", ["POSTGRES_SCRAM_SHA_256", "POSTGRES_MD5"])
def test_password_auth_against_the_secret(make_proxy: Callable[..., ProxyUnderTest], auth_type: str) -> None:
    proxy = make_proxy(iam_auth="DISABLED", require_tls=False, client_password_auth_type=auth_type)
    with proxy.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (proxy.user,)
    with no_database_connection_opened(proxy):
        message = refusal(**proxy.conninfo(password="wrong-password"))
    assert texts.WRONG_PASSWORD.format(user=proxy.user) in message


def test_scram_is_offered_with_4096_iterations(make_proxy: Callable[..., ProxyUnderTest]) -> None:
    proxy = make_proxy(iam_auth="DISABLED", require_tls=False)
    client = RawClient(proxy.host, proxy.port)
    client.send(m.startup_message({"user": proxy.user, "database": proxy.database}))
    request = client.read_frame()
    assert m.auth_code(request.body) == m.AUTH_SASL
    assert b"SCRAM-SHA-256\0" in request.body
    client.send(m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abcdefghijklmnop"))
    server_first = client.read_frame().body[4:]
    assert server_first.endswith(b",i=4096")
    client.close()
