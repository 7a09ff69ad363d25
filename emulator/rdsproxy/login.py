"""A client's way in: the startup packet, TLS, RDS Proxy's parameter rules, authentication and the
welcome that follows.

login() either returns who logged in (Login) or raises Refused with RDS Proxy's words; it never touches
a database connection, so a failed login costs the database nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from scramp import ScramException

from emulator.rdsproxy import texts
from emulator.rdsproxy.auth import ScramExchange, TokenRejected, md5_password, md5_salt, verify_iam_token
from emulator.rdsproxy.client import ClientProtocol
from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.dbconn import Credentials, DatabaseError, DatabaseUnavailable, PoolKey, pool_key
from emulator.rdsproxy.pool import PoolError
from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Frontend
from emulator.rdsproxy.protocol.parameters import CLIENT_PARAMETERS, SessionParameters

_ALLOWED = {name.lower(): name for name in ("user", "database", *CLIENT_PARAMETERS)}
_FALSE = ("false", "off", "0", "no")
_MAX_AUTH_MESSAGE = 65536
_MD5 = "POSTGRES_MD5"


class Refused(Exception):
    """The proxy turns the client away with a FATAL error in RDS Proxy's words (or PostgreSQL's,
    fields: when the server refused what the client asked for)."""

    def __init__(
        self, code: str, message: str, *, auth: bool = False, fields: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # Counted as ClientConnectionsSetupFailedAuth (authentication or TLS misconfigured).
        self.auth = auth
        self.fields = fields


class CancelRequested(Exception):
    """The connection was a CancelRequest: RDS Proxy does not support cancellation; nothing to do."""


@dataclass(frozen=True)
class Login:
    user: str
    database: str
    tls: bool
    # The startup packet's parameters, as the client spelled them.
    params: dict[str, str] = field(default_factory=dict)


class Authority(Protocol):
    """What login needs to know about the proxy."""

    @property
    def config(self) -> ProxyConfig: ...

    @property
    def tls_context(self) -> ssl.SSLContext | None: ...

    def credentials_for(self, user: str) -> Credentials | None: ...

    def secret_key_for(self, access_key_id: str) -> str | None: ...


class ClientStream:
    """The client connection as login uses it: reads with a deadline, writes, and the TLS upgrade."""

    def __init__(self, protocol: ClientProtocol, *, timeout: float) -> None:
        self.protocol = protocol
        self.writer = protocol
        self.timeout = timeout
        self.tls = False
        # The port of the listener (proxy endpoint) the client connected to: an IAM token is signed
        # for one endpoint's host and port.
        sockname = protocol.get_extra_info("sockname") or ("", 0)
        self.local_port = int(sockname[1])

    async def read_more(self) -> bytes:
        data = await asyncio.wait_for(self.protocol.read_more(), self.timeout)
        if not data:
            raise ConnectionResetError("the client closed the connection during login")
        return data

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():  # uvloop raises on a closed transport; the reader finds out
            self.writer.write(data)

    async def start_tls(self, context: ssl.SSLContext) -> None:
        self.writer.write(b"S")
        await self.writer.drain()
        await self.writer.start_tls(context)
        self.tls = True


async def login(stream: ClientStream, authority: Authority, debug: Callable[[str], None]) -> Login:
    """Read the startup packet(s) and authenticate; debug receives why a token was refused."""
    startup = m.StartupReader()
    while True:
        packet = startup.packet()
        if packet is None:
            startup.feed(await stream.read_more())
            continue
        if packet.code == m.SSL_REQUEST:
            if startup.take_raw():
                raise m.ProtocolViolation("data after SSLRequest before the TLS handshake")
            if stream.tls or authority.tls_context is None:
                stream.write(b"N")
                continue
            await stream.start_tls(authority.tls_context)
            continue
        if packet.code == m.GSSENC_REQUEST:
            stream.write(b"N")
            continue
        if packet.code == m.CANCEL_REQUEST:
            raise CancelRequested
        if packet.code != m.PROTOCOL_3_0:
            raise Refused(texts.FEATURE_NOT_SUPPORTED, texts.PROTOCOL_VERSION)
        return await _authenticate(stream, authority, packet.params, debug)


def _check_parameters(params: dict[str, str]) -> None:
    for name, value in params.items():
        lower = name.lower()
        if lower == "replication":
            if value.lower() not in _FALSE:
                raise Refused(texts.FEATURE_NOT_SUPPORTED, texts.REPLICATION)
        elif lower == "options":
            raise Refused(texts.FEATURE_NOT_SUPPORTED, texts.COMMAND_LINE_OPTIONS)
        elif lower not in _ALLOWED:
            raise Refused(texts.FEATURE_NOT_SUPPORTED, texts.UNSUPPORTED_OPTION.format(name=name))


async def _authenticate(
    stream: ClientStream, authority: Authority, params: dict[str, str], debug: Callable[[str], None]
) -> Login:
    config = authority.config
    _check_parameters(params)
    user = params.get("user", "")
    if not user:
        raise Refused(texts.INVALID_AUTHORIZATION, texts.MISSING_USER)
    database = params.get("database") or user
    if config.require_tls and not stream.tls:
        raise Refused(texts.INVALID_AUTHORIZATION, texts.TLS_REQUIRED, auth=True)
    iam = config.iam_auth == "REQUIRED"
    if iam and not stream.tls:
        raise Refused(texts.INVALID_AUTHORIZATION, texts.IAM_NEEDS_TLS, auth=True)
    credentials = authority.credentials_for(user)
    if credentials is None:
        raise Refused(texts.INVALID_AUTHORIZATION, texts.NO_CREDENTIALS.format(user=user), auth=True)
    messages = _AuthMessages(stream)
    if iam:
        await _iam(messages, authority, user, debug)
    elif config.client_password_auth_type == _MD5:
        await _md5(messages, user, credentials.password)
    else:
        await _scram(messages, user, credentials.password)
    return Login(user, database, stream.tls, params)


class _AuthMessages:
    """The client's password messages, one at a time."""

    def __init__(self, stream: ClientStream) -> None:
        self.stream = stream
        self._frames = m.FrameReader(max_message=_MAX_AUTH_MESSAGE)

    async def next(self) -> bytes:
        while True:
            for frame in self._frames.frames():
                if frame.kind != Frontend.PASSWORD:
                    raise m.ProtocolViolation(f"expected a password message, got {frame.raw[:1]!r}")
                return frame.body
            self._frames.feed(await self.stream.read_more())


async def _iam(
    messages: _AuthMessages, authority: Authority, user: str, debug: Callable[[str], None]
) -> None:
    # The proxy must see the token itself: it asks for the password in clear, over TLS only.
    messages.stream.write(m.authentication(m.AUTH_CLEARTEXT))
    token = m.read_cstring(await messages.next())[0]
    config = authority.config
    try:
        verify_iam_token(
            token,
            user=user,
            endpoint_hosts=config.endpoint_hosts,
            port=messages.stream.local_port,
            region=config.region,
            secret_for_key=authority.secret_key_for,
        )
    except TokenRejected as why:
        debug(f"IAM token refused: {why}")
        raise Refused(texts.INVALID_PASSWORD, texts.IAM_FAILED.format(user=user), auth=True) from None


async def _md5(messages: _AuthMessages, user: str, password: str) -> None:
    salt = md5_salt()
    messages.stream.write(m.authentication(m.AUTH_MD5, salt))
    sent = m.read_cstring(await messages.next())[0]
    if not hmac.compare_digest(sent.encode(), md5_password(user, password, salt).encode()):
        raise Refused(texts.INVALID_PASSWORD, texts.WRONG_PASSWORD.format(user=user), auth=True)


async def _scram(messages: _AuthMessages, user: str, password: str) -> None:
    wrong = Refused(texts.INVALID_PASSWORD, texts.WRONG_PASSWORD.format(user=user), auth=True)
    scram = ScramExchange(password)
    stream = messages.stream
    stream.write(m.auth_sasl([ScramExchange.MECHANISM]))
    mechanism, first = m.parse_sasl_initial(await messages.next())
    if mechanism != ScramExchange.MECHANISM:
        raise Refused(texts.INVALID_AUTHORIZATION, texts.UNSUPPORTED_AUTH, auth=True)
    try:
        server_first = scram.first(first)
        stream.write(m.authentication(m.AUTH_SASL_CONTINUE, server_first))
        final = scram.final(await messages.next())
    except ScramException:
        raise Refused(texts.PROTOCOL_VIOLATION, texts.MALFORMED_SCRAM, auth=True) from None
    if final is None:
        raise wrong
    stream.write(m.authentication(m.AUTH_SASL_FINAL, final))


class Server(Protocol):
    """What the welcome needs of the proxy's target."""

    @property
    def baseline_params(self) -> dict[str, str]: ...

    @property
    def unreported_defaults(self) -> dict[str, str]: ...

    async def spelling(self, name: str, value: str, key: PoolKey) -> str: ...


async def welcome(
    stream: ClientStream,
    login: Login,
    server: Server,
    *,
    key: int,
    reported: Mapping[str, str] | None = None,
) -> SessionParameters:
    """After authentication, as PostgreSQL does: AuthenticationOk, then the startup parameters take
    effect (a value PostgreSQL refuses ends the login with its FATAL), then what the client learns of
    its session: ParameterStatus, BackendKeyData, ReadyForQuery (reported: values that differ from the
    server's baseline on this endpoint's connections). Refused raised after AuthenticationOk is
    written."""
    stream.write(m.authentication(m.AUTH_OK))
    chosen: dict[str, str] = {}
    borrower = pool_key(login.database, login.user, login.tls)
    for name in CLIENT_PARAMETERS:
        value = next((v for k, v in login.params.items() if k.lower() == name.lower()), None)
        if value is None:
            continue
        try:
            chosen[name] = await server.spelling(name, value, borrower)
        except (DatabaseUnavailable, PoolError):
            # The target is down or the pool busy: the client's own spelling, asked again next time.
            chosen[name] = value
        except DatabaseError as exc:
            stream.write(m.error_from_fields({**exc.fields, "S": "FATAL", "V": "FATAL"}))
            raise Refused(exc.sqlstate, str(exc), fields=exc.fields) from None
    baseline = {**server.baseline_params, **(reported or {})}
    parameters = SessionParameters(chosen, baseline, server.unreported_defaults)
    out = [m.parameter_status(name, value) for name, value in parameters.seen.items()]
    out += [m.backend_key_data(key, secrets.randbits(31)), m.ready_for_query(b"I")]
    stream.write(b"".join(out))
    return parameters
