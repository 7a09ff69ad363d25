"""Client authentication the way RDS Proxy does it: IAM tokens checked with SigV4, or SCRAM / MD5
against the password in the Secrets Manager secret."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import secrets
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from scramp import ScramException, ScramMechanism

TOKEN_LIFETIME_SECONDS = 900
SCRAM_ITERATIONS = 4096  # fixed for client-to-proxy authentication in RDS Proxy
_TIMESTAMP = "%Y%m%dT%H%M%SZ"


class TokenRejected(Exception):
    """Why an IAM token was refused (kept for the proxy's log; the client gets RDS Proxy's text)."""


@dataclass(frozen=True)
class IamToken:
    host: str
    port: int
    params: dict[str, str]
    signature: str

    @property
    def access_key_id(self) -> str:
        return self.params["X-Amz-Credential"].split("/")[0]


def parse_token(token: str) -> IamToken:
    """`host:port/?Action=connect&DBUser=...&X-Amz-...&X-Amz-Signature=...` as boto3 makes it."""
    hostport, sep, query = token.partition("/?")
    if not sep:
        raise TokenRejected("not a presigned URL")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise TokenRejected("no host:port")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    params = dict(pairs)
    if len(params) != len(pairs):
        raise TokenRejected("repeated query parameters")
    signature = params.pop("X-Amz-Signature", "")
    required = ("Action", "DBUser", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires")
    missing = [name for name in required if name not in params]
    if missing or not signature:
        raise TokenRejected(f"missing {', '.join(missing) or 'X-Amz-Signature'}")
    return IamToken(host, int(port), params, signature)


def verify_iam_token(
    token: str,
    *,
    user: str,
    endpoint_hosts: Iterable[str],
    port: int,
    region: str,
    secret_for_key: Callable[[str], str | None],
    now: datetime.datetime | None = None,
) -> None:
    """Raise TokenRejected unless token is a valid rds-db:connect token for user at this endpoint."""
    parsed = parse_token(token)
    p = parsed.params
    if p["Action"] != "connect":
        raise TokenRejected(f"Action is {p['Action']!r}, not 'connect'")
    if p["DBUser"] != user:
        raise TokenRejected(f"token is for DBUser {p['DBUser']!r}, the startup user is {user!r}")
    if parsed.host not in set(endpoint_hosts) or parsed.port != port:
        raise TokenRejected(f"token is for {parsed.host}:{parsed.port}, not this proxy endpoint")
    if p["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        raise TokenRejected("not SigV4")
    try:
        key_id, date, scope_region, service, terminator = p["X-Amz-Credential"].split("/")
    except ValueError as exc:
        raise TokenRejected("malformed credential scope") from exc
    if service != "rds-db" or terminator != "aws4_request" or not p["X-Amz-Date"].startswith(date):
        raise TokenRejected("credential scope is not for rds-db")
    if scope_region != region:
        # A token is signed for one region: the one of the proxy it was generated for.
        raise TokenRejected(f"token is signed for region {scope_region!r}, the proxy is in {region!r}")
    try:
        signed_at = datetime.datetime.strptime(p["X-Amz-Date"], _TIMESTAMP).replace(tzinfo=datetime.UTC)
        expires = int(p["X-Amz-Expires"])
    except ValueError as exc:
        raise TokenRejected("malformed date or expiry") from exc
    now = now or datetime.datetime.now(datetime.UTC)
    if expires > TOKEN_LIFETIME_SECONDS or expires < 1:
        raise TokenRejected(f"X-Amz-Expires {expires} is outside 1..{TOKEN_LIFETIME_SECONDS}")
    if now > signed_at + datetime.timedelta(seconds=expires):
        raise TokenRejected("token expired")
    if signed_at > now + datetime.timedelta(minutes=5):
        raise TokenRejected("token is dated in the future")
    secret_key = secret_for_key(key_id)
    if secret_key is None:
        raise TokenRejected(f"unknown access key {key_id}")
    expected = _signature(parsed, region, Credentials(key_id, secret_key, p.get("X-Amz-Security-Token")))
    if not hmac.compare_digest(expected, parsed.signature):
        raise TokenRejected("signature does not match")


def environment_secret_key(access_key_id: str) -> str | None:
    """The secret key of the AWS credentials in this process's environment, for tokens they signed
    (the stack gives the proxy and the database endpoint its moto credentials)."""
    if access_key_id == os.environ.get("AWS_ACCESS_KEY_ID"):
        return os.environ.get("AWS_SECRET_ACCESS_KEY")
    return None


def _signature(token: IamToken, region: str, credentials: Credentials) -> str:
    """botocore's own SigV4 maths, at the token's timestamp instead of now."""
    auth = SigV4QueryAuth(credentials, "rds-db", region, expires=int(token.params["X-Amz-Expires"]))
    query = urllib.parse.urlencode(token.params, quote_via=urllib.parse.quote)
    request = AWSRequest(method="GET", url=f"https://{token.host}:{token.port}/?{query}")
    request.context["timestamp"] = token.params["X-Amz-Date"]
    canonical = auth.canonical_request(request)
    return str(auth.signature(auth.string_to_sign(request, canonical), request))


# -- password authentication against the secret -----------------------------------------------


class ScramExchange:
    """Server side of SCRAM-SHA-256, 4096 iterations like RDS Proxy.

    scramp derives the keys; the exchange itself is checked here because libpq sends an empty user
    name in its client-first message ("n=,r=..."), which PostgreSQL accepts (it uses the startup
    user) and scramp's RFC-strict server refuses.
    """

    MECHANISM = "SCRAM-SHA-256"

    def __init__(self, password: str) -> None:
        salt, stored_key, server_key, iterations = ScramMechanism(self.MECHANISM).make_auth_info(
            password, iteration_count=SCRAM_ITERATIONS
        )
        self._salt: bytes = salt
        self._stored_key: bytes = stored_key
        self._server_key: bytes = server_key
        self._iterations: int = iterations
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""

    def first(self, client_first: bytes) -> bytes:
        text = _decode(client_first)
        gs2_flag, _, rest = text.partition(",")
        _authzid, _, bare = rest.partition(",")
        if gs2_flag not in ("n", "y"):  # "p" would ask for channel binding, which we do not offer
            raise ScramException("channel binding is not supported")
        attributes = dict(part.split("=", 1) for part in bare.split(",") if "=" in part)
        client_nonce = attributes.get("r", "")
        if not client_nonce:
            raise ScramException("no client nonce")
        self._client_first_bare = bare
        self._nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        salt = base64.b64encode(self._salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self._iterations}"
        return self._server_first.encode()

    def final(self, client_final: bytes) -> bytes | None:
        """The server-final message, or None when the proof is wrong; ScramException when the
        message is not a SCRAM client-final message at all."""
        text = _decode(client_final)
        without_proof, _, proof_part = text.rpartition(",p=")
        attributes = dict(part.split("=", 1) for part in without_proof.split(",") if "=" in part)
        if attributes.get("r") != self._nonce or not proof_part:
            return None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError:
            return None
        client_signature = hmac.new(self._stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(client_signature):
            return None
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._stored_key):
            return None
        server_signature = hmac.new(self._server_key, auth_message, hashlib.sha256).digest()
        return b"v=" + base64.b64encode(server_signature)


def _decode(message: bytes) -> str:
    try:
        return message.decode()
    except UnicodeDecodeError as exc:
        raise ScramException("malformed SCRAM message: not UTF-8") from exc


def md5_salt() -> bytes:
    return secrets.token_bytes(4)


def md5_password(user: str, password: str, salt: bytes) -> str:
    """What a client sends for AuthenticationMD5Password: md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest()  # noqa: S324 - the protocol's own hash
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()  # noqa: S324
