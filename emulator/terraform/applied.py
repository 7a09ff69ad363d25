"""What Terraform applied, read back through the AWS API: the emulator and the handler follow it.

The same calls work against AWS; where moto answered differently, the kit's AWS emulator is
fixed to answer as AWS does (emulator/moto_quirks.py), so nothing here is local-only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AppliedProxy:
    name: str
    endpoint: str
    arn: str
    secret_arn: str
    target_instance: str
    # ProxyConfig settings by their Terraform names (emulator/rdsproxy/config.py).
    settings: dict[str, Any]


@dataclass(frozen=True)
class AppliedDatabase:
    identifier: str
    db_name: str
    username: str
    password: str


@dataclass(frozen=True)
class AppliedFunction:
    name: str
    handler: str
    runtime: str
    timeout: int
    memory_size: int
    # None when the function has no reserved concurrency.
    reserved_concurrency: int | None
    environment: dict[str, str]


def read_proxy(rds: Any, name: str) -> AppliedProxy:
    """The proxy, its default target group's pool settings and its target, as the emulator's settings."""
    proxy = rds.describe_db_proxies(DBProxyName=name)["DBProxies"][0]
    if proxy.get("EngineFamily") != "POSTGRESQL":
        raise ValueError(f"proxy {name} is for {proxy.get('EngineFamily')}, the emulator speaks PostgreSQL")
    auths = proxy.get("Auth") or []
    if len(auths) != 1:
        # The emulator logs in to PostgreSQL with one secret (README: known differences).
        raise ValueError(f"proxy {name} has {len(auths)} auth entries; the emulator supports exactly one")
    auth = auths[0]
    group = next(
        g
        for g in rds.describe_db_proxy_target_groups(DBProxyName=name)["TargetGroups"]
        if g["TargetGroupName"] == "default"
    )
    pool = group.get("ConnectionPoolConfig", {})
    targets = rds.describe_db_proxy_targets(DBProxyName=name)["Targets"]
    instances = [t["RdsResourceId"] for t in targets if t.get("Type") == "RDS_INSTANCE"]
    if len(instances) != 1:
        raise ValueError(f"proxy {name} has {len(instances)} RDS instance targets; expected one")
    settings: dict[str, Any] = {
        "name": name,
        "target_name": instances[0],
        "require_tls": bool(proxy.get("RequireTLS", False)),
        "idle_client_timeout": int(proxy.get("IdleClientTimeout", 1800)),
        "debug_logging": bool(proxy.get("DebugLogging", False)),
        "iam_auth": auth.get("IAMAuth", "DISABLED"),
        "client_password_auth_type": auth.get("ClientPasswordAuthType", "POSTGRES_SCRAM_SHA_256"),
        "secret_arn": auth["SecretArn"],
        "connection_borrow_timeout": int(pool.get("ConnectionBorrowTimeout", 120)),
        "max_connections_percent": int(pool.get("MaxConnectionsPercent", 100)),
        "max_idle_connections_percent": int(pool.get("MaxIdleConnectionsPercent", 50)),
        "session_pinning_filters": list(pool.get("SessionPinningFilters", [])),
        "init_query": pool.get("InitQuery", ""),
    }
    return AppliedProxy(
        name=name,
        endpoint=proxy["Endpoint"],
        arn=proxy["DBProxyArn"],
        secret_arn=auth["SecretArn"],
        target_instance=instances[0],
        settings=settings,
    )


def read_database(rds: Any, secretsmanager: Any, proxy: AppliedProxy) -> AppliedDatabase:
    """The target instance's database name, and the credentials the proxy logs in with (its secret)."""
    instance = rds.describe_db_instances(DBInstanceIdentifier=proxy.target_instance)["DBInstances"][0]
    secret = json.loads(secretsmanager.get_secret_value(SecretId=proxy.secret_arn)["SecretString"])
    return AppliedDatabase(
        identifier=proxy.target_instance,
        db_name=instance.get("DBName") or "postgres",
        username=secret["username"],
        password=secret["password"],
    )


def read_function(lambda_client: Any, name: str) -> AppliedFunction:
    """The function's configuration as Lambda reports it (get_function_configuration)."""
    config = lambda_client.get_function_configuration(FunctionName=name)
    concurrency = lambda_client.get_function_concurrency(FunctionName=name).get(
        "ReservedConcurrentExecutions"
    )
    return AppliedFunction(
        name=name,
        handler=config["Handler"],
        runtime=config["Runtime"],
        timeout=int(config.get("Timeout", 3)),
        memory_size=int(config.get("MemorySize", 128)),
        reserved_concurrency=None if concurrency is None else int(concurrency),
        environment=dict(config.get("Environment", {}).get("Variables", {})),
    )


@dataclass(frozen=True)
class AppliedStack:
    """Everything the local twin takes from an applied Terraform stack."""

    outputs: dict[str, Any]
    proxy: AppliedProxy
    database: AppliedDatabase
    function: AppliedFunction

    def handler_environment(self, *, proxy_host: str, proxy_port: int) -> dict[str, str]:
        """The applied function's environment with its proxy endpoint mapped to the local emulator."""
        return {**self.function.environment, "DB_PROXY_ENDPOINT": proxy_host, "DB_PORT": str(proxy_port)}
