"""The same stack from compose.yaml, for machines with a Docker engine."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import psycopg

from emulator.errors import ComponentError
from emulator.lifecycle import Started
from emulator.net import LOOPBACK, free_port
from emulator.paths import COMPOSE_FILE
from emulator.stack import libpq
from emulator.stack.embedded import StackConfig, StackEnvironment
from emulator.stack.moto import ACCESS_KEY_ID
from emulator.stack.postgres import PostgresEndpoint
from emulator.stack.proxies import DirectProxy, RemoteProxy
from emulator.wait import wait_until

COMPONENT = "Docker Compose stack"
_AWS_SECRET = "local-twin-secret-key"  # noqa: S105 - moto accepts any key; same as compose.yaml


def docker_engine_problem() -> str | None:
    """None when a Docker engine answers; otherwise why not (the reason Docker-only tests skip with)."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI on PATH"
    try:
        done = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=15, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 15 s"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return "no Docker engine answers (`docker info`: " + (lines[-1] if lines else "failed") + ")"
    compose = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    if compose.returncode != 0:
        return "the docker compose plugin is not installed"
    return None


class ComposeStack(Started, StackEnvironment):
    """PostgreSQL, PgBouncer and moto from compose.yaml, on free loopback ports, one project per stack."""

    ca_file = None

    def __init__(self, config: StackConfig | None = None, compose_file: Path = COMPOSE_FILE) -> None:
        self.config = config or StackConfig()
        self.compose_file = compose_file
        self.project = f"local-twin-{secrets.token_hex(4)}"
        self.db_password = secrets.token_urlsafe(18)
        self.superuser_password = secrets.token_urlsafe(18)
        self.ports = {name: free_port() for name in ("PG_HOST_PORT", "PGBOUNCER_HOST_PORT", "MOTO_HOST_PORT")}
        self.endpoint_url = f"http://{LOOPBACK}:{self.ports['MOTO_HOST_PORT']}"
        self.secret_arn = ""

    def _compose(self, *args: str, timeout: float = 600) -> None:
        env = {
            **os.environ,
            **{key: str(port) for key, port in self.ports.items()},
            "APP_DB": self.config.database,
            "APP_USER": self.config.db_user,
            "APP_PASSWORD": self.db_password,
            "POSTGRES_PASSWORD": self.superuser_password,
            "MAX_CONNECTIONS": str(self.config.max_connections),
            "POOL_SIZE": str(self.config.pool_size),
            "SECRET_NAME": self.config.secret_name,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": _AWS_SECRET,
            "AWS_REGION": self.config.region,
        }
        argv = ["docker", "compose", "-f", str(self.compose_file), "-p", self.project, *args]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ComponentError(COMPONENT, f"`{' '.join(argv[2:])}` failed:\n{done.stderr.strip()}")

    def start(self) -> None:
        self._compose("up", "-d", "--wait", "postgres", "moto")
        self._compose("up", "-d", "pgbouncer", "secret")
        self.postgres = PostgresEndpoint(
            LOOPBACK, self.ports["PG_HOST_PORT"], self.superuser_password, tls=True
        )
        self.direct = DirectProxy(LOOPBACK, self.ports["PG_HOST_PORT"], tls=True)
        self.proxy = RemoteProxy(
            "pgbouncer", LOOPBACK, self.ports["PGBOUNCER_HOST_PORT"], handler_auth="iam", tls=True
        )
        wait_until(self._pgbouncer_ready, component="PgBouncer container", timeout=120)
        wait_until(self._secret_ready, component="Secrets Manager secret (secret service)", timeout=120)

    def _pgbouncer_ready(self) -> bool:
        with psycopg.connect(
            **libpq.connect_kwargs(
                host=self.proxy.host,
                port=self.proxy.port,
                dbname=self.config.database,
                user=self.config.db_user,
                connect_timeout=2,
            )
        ) as conn:
            conn.execute("SELECT 1")
        return True

    def _secret_ready(self) -> bool:
        import boto3  # noqa: PLC0415

        client = boto3.session.Session().client(
            "secretsmanager",
            endpoint_url=self.endpoint_url,
            region_name=self.config.region,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=_AWS_SECRET,
        )
        self.secret_arn = str(client.describe_secret(SecretId=self.config.secret_name)["ARN"])
        return True

    def stop(self) -> None:
        self._compose("down", "--volumes", "--remove-orphans", timeout=300)

    def aws_environment(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.config.region,
            "AWS_DEFAULT_REGION": self.config.region,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": _AWS_SECRET,
        }
