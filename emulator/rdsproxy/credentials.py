"""Where the proxy's database credentials come from.

Two sources, as RDS Proxy has two authentication schemes towards the database:
- the Secrets Manager secret (`default_auth_scheme = NONE`, the default): its AWSCURRENT version,
  read again every `secret_refresh_seconds` and at once when the database refuses the password
  (28P01), so that a rotation takes effect. AWS documents neither how nor how often RDS Proxy
  re-reads a secret ("If you change the password for the database user, update the corresponding
  Secrets Manager secret"); both are choices, see README's options table.
- end-to-end IAM (`IAM_AUTH`): no secret; every database connection logs in as the client's own user
  with an IAM token the proxy generates with botocore for the database endpoint it connects to.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Protocol

from emulator.rdsproxy.aws import aws_client
from emulator.rdsproxy.config import ProxyConfig
from emulator.rdsproxy.dbconn import Credentials
from emulator.rdsproxy.proxylog import ProxyLog

# The role RDS Proxy creates on its target to monitor it; with end-to-end IAM the emulator also
# monitors as it (it has no secret user), so the role must be granted rds_iam.
MONITOR_ROLE = "rdsproxyadmin"
# A database refusing the password makes the secret be read again, but not more often than this:
# a wrong secret must not turn every connection attempt into a Secrets Manager call.
_MIN_REREAD_SECONDS = 1.0


class DatabaseCredentials(Protocol):
    """What the target needs to know to log in to the database and to check clients."""

    @property
    def monitor_user(self) -> str:
        """The user the proxy's own connections (discovery, probes) log in as."""

    @property
    def iam(self) -> bool:
        """Whether the database is reached with IAM tokens (which need TLS)."""

    async def load(self) -> None:
        """Read the credentials the proxy starts with."""

    def for_client(self, user: str) -> Credentials | None:
        """The credentials a client logging in as user is checked against; None when the proxy has
        none for that user."""

    async def for_connection(self, user: str, host: str, port: int) -> Credentials:
        """What a new database connection to host:port for user logs in with."""

    async def refused(self) -> bool:
        """The database refused the password: True when the credentials changed since (worth one
        more attempt)."""

    async def refresh_if_due(self) -> None:
        """Called about once a second: re-read what may have changed."""


def database_credentials(config: ProxyConfig, log: ProxyLog) -> DatabaseCredentials:
    if config.default_auth_scheme == "IAM_AUTH":
        return IamTokens(config)
    return SecretCredentials(config, log)


class SecretCredentials:
    """The secret's AWSCURRENT version ({"username", "password"}; other fields ignored, as RDS Proxy
    ignores them)."""

    iam = False

    def __init__(self, config: ProxyConfig, log: ProxyLog) -> None:
        self.config = config
        self.log = log
        self.current: Credentials | None = None
        self.version_id = ""
        self._read_at = 0.0
        self._reread_on_refusal_at = 0.0
        self._reading: asyncio.Lock | None = None
        self._secrets: Any = None  # the Secrets Manager client, made at the first read

    @property
    def monitor_user(self) -> str:
        assert self.current is not None
        return self.current.user

    async def load(self) -> None:
        await self._reread()

    def for_client(self, user: str) -> Credentials | None:
        current = self.current
        return current if current is not None and current.user == user else None

    async def for_connection(self, user: str, host: str, port: int) -> Credentials:
        assert self.current is not None
        return self.current

    async def refused(self) -> bool:
        now = time.monotonic()
        if now - self._reread_on_refusal_at < _MIN_REREAD_SECONDS:
            return False
        self._reread_on_refusal_at = now
        before = self.version_id
        await self._reread()
        return self.version_id != before

    async def refresh_if_due(self) -> None:
        refresh = self.config.secret_refresh_seconds
        if refresh > 0 and time.monotonic() - self._read_at >= refresh:
            try:
                await self._reread()
            except Exception as exc:  # noqa: BLE001 - a failed refresh keeps the credentials it has
                self._read_at = time.monotonic()
                self.log.warn(f"Could not read the secret {self.config.secret_arn} again: {exc}")

    async def _reread(self) -> None:
        if self._reading is None:
            self._reading = asyncio.Lock()
        async with self._reading:
            loop = asyncio.get_running_loop()
            version_id, credentials = await loop.run_in_executor(None, self._read)
            self._read_at = time.monotonic()
            if version_id != self.version_id:
                first = not self.version_id
                self.current, self.version_id = credentials, version_id
                what = "Read" if first else "Read a new version of"
                # Tools (rotate-secret) wait for this line to know the proxy follows the rotation.
                self.log.info(f"{what} the secret {self.config.secret_arn}: version {version_id}.")

    def _read(self) -> tuple[str, Credentials]:
        client = self._secrets
        if client is None:  # made once (reads come one at a time, under _reread's lock)
            client = self._secrets = aws_client(
                "secretsmanager", self.config.region, endpoint_url=self.config.aws_endpoint_url
            )
        answer = client.get_secret_value(SecretId=self.config.secret_arn, VersionStage="AWSCURRENT")
        secret = json.loads(answer["SecretString"])
        return str(answer["VersionId"]), Credentials(str(secret["username"]), str(secret["password"]))


class IamTokens:
    """End-to-end IAM: a fresh token per database connection, signed with the proxy's own AWS
    credentials (its environment's, as RDS Proxy uses its IAM role), for the endpoint it dials."""

    iam = True
    monitor_user = MONITOR_ROLE

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._rds: Any = None

    async def load(self) -> None:
        # botocore signs locally: no request is made, only the client is built (once).
        self._rds = aws_client("rds", self.config.region)

    def for_client(self, user: str) -> Credentials | None:
        # Any user: the database decides (the user must exist and be granted rds_iam).
        return Credentials(user, "")

    async def for_connection(self, user: str, host: str, port: int) -> Credentials:
        token = self._rds.generate_db_auth_token(
            DBHostname=host, Port=port, DBUsername=user, Region=self.config.region
        )
        return Credentials(user, str(token))

    async def refused(self) -> bool:
        return False  # a token is made per connection: trying again would be refused again

    async def refresh_if_due(self) -> None:
        return None
