"""What Terraform applied: the state says which proxies and functions exist, the AWS API what they are.

No output names are required. Every `aws_db_proxy` and `aws_lambda_function` in the state (root
module and child modules) is read back through the same AWS calls that work against AWS
(describe_db_proxies, its default target group and targets, the target instance and its secret,
get_function_configuration); where moto answered differently, the kit's AWS emulator is fixed to
answer as AWS does (emulator/stack/moto_quirks.py), so nothing here is local-only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# RDS endpoints listen on the engine's port; RDS Proxy for PostgreSQL always on 5432.
POSTGRES_PORT = 5432


@dataclass(frozen=True)
class StateResource:
    """A managed resource in Terraform's state (`terraform show -json`)."""

    address: str
    type: str
    values: Mapping[str, Any]

    @property
    def region(self) -> str | None:
        """The region in the resource's ARN (a provider may pin its own region)."""
        arn = str(self.values.get("arn") or "")
        parts = arn.split(":")
        return parts[3] if len(parts) > 3 and parts[3] else None


def state_resources(state: Mapping[str, Any], resource_type: str) -> list[StateResource]:
    """Every managed resource of a type, in the root module and in every child module."""

    def walk(module: Mapping[str, Any]) -> Iterator[StateResource]:
        for resource in module.get("resources", []):
            if resource.get("mode") == "managed" and resource.get("type") == resource_type:
                yield StateResource(resource["address"], resource["type"], resource.get("values") or {})
        for child in module.get("child_modules", []):
            yield from walk(child)

    return list(walk(state.get("values", {}).get("root_module", {})))


@dataclass(frozen=True)
class AppliedProxyEndpoint:
    """One of the proxy's endpoints besides its default one (aws_db_proxy_endpoint)."""

    name: str
    # READ_WRITE or READ_ONLY.
    target_role: str
    host: str


@dataclass(frozen=True)
class AppliedProxy:
    name: str
    endpoint: str
    arn: str
    region: str
    secret_arn: str
    # The DB instance the proxy targets, or "" when it targets a cluster (target_cluster).
    target_instance: str
    # ProxyConfig settings by their Terraform names (emulator/rdsproxy/config.py).
    settings: dict[str, Any]
    # The proxy's other endpoints (aws_db_proxy_endpoint), from describe_db_proxy_endpoints.
    endpoints: tuple[AppliedProxyEndpoint, ...] = ()
    # The DB cluster the proxy targets (aws_db_proxy_target with db_cluster_identifier), or "".
    target_cluster: str = ""

    @property
    def other_endpoints(self) -> tuple[str, ...]:
        """The host names of the proxy's other endpoints."""
        return tuple(endpoint.host for endpoint in self.endpoints)


@dataclass(frozen=True)
class AppliedDatabase:
    identifier: str
    db_name: str
    username: str
    password: str
    # The instance's own endpoint (a cluster's: its writer endpoint), which a function may use
    # instead of the proxy's.
    address: str = ""
    port: int = POSTGRES_PORT
    # iam_database_authentication_enabled: users granted rds_iam log in with IAM tokens.
    iam_database_authentication: bool = False
    # single (one instance), aurora (an Aurora cluster, or a Multi-AZ DB cluster: readable
    # standbys) or multi-az (a Multi-AZ DB instance: one standby nobody reads).
    kind: str = "single"
    # A cluster's instances, its writer first.
    instances: tuple[str, ...] = ()
    # A cluster's reader endpoint.
    reader_address: str = ""


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
    region: str = "us-east-1"
    arn: str = ""


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
    groups = rds.describe_db_proxy_target_groups(DBProxyName=name)["TargetGroups"]
    group = next((g for g in groups if g["TargetGroupName"] == "default"), None)
    if group is None:
        raise ValueError(f"proxy {name} has no default target group (aws_db_proxy_default_target_group)")
    pool = group.get("ConnectionPoolConfig", {})
    targets = rds.describe_db_proxy_targets(DBProxyName=name)["Targets"]
    clusters = [t["RdsResourceId"] for t in targets if t.get("Type") == "TRACKED_CLUSTER"]
    # A cluster's members are listed as RDS_INSTANCE targets too (in AWS, not in moto).
    instances = [t["RdsResourceId"] for t in targets if t.get("Type") == "RDS_INSTANCE"]
    if len(clusters) > 1 or (not clusters and len(instances) != 1):
        raise ValueError(
            f"proxy {name} has {len(clusters)} cluster and {len(instances)} RDS instance targets "
            "(aws_db_proxy_target); the local twin runs one database behind it (an instance or a "
            "cluster), so it needs exactly one"
        )
    target = clusters[0] if clusters else instances[0]
    settings: dict[str, Any] = {
        "name": name,
        "target_name": target,
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
        region=proxy["DBProxyArn"].split(":")[3],
        secret_arn=auth["SecretArn"],
        target_instance="" if clusters else instances[0],
        settings=settings,
        endpoints=tuple(
            AppliedProxyEndpoint(
                str(endpoint["DBProxyEndpointName"]),
                str(endpoint.get("TargetRole") or "READ_WRITE"),
                str(endpoint.get("Endpoint") or ""),
            )
            for endpoint in rds.describe_db_proxy_endpoints(DBProxyName=name)["DBProxyEndpoints"]
            if not endpoint.get("IsDefault")
        ),
        target_cluster=clusters[0] if clusters else "",
    )


def read_database(rds: Any, secretsmanager: Any, proxy: AppliedProxy) -> AppliedDatabase:
    """The target's database name, kind and endpoints, and the credentials the proxy logs in with
    (its secret)."""
    secret = json.loads(secretsmanager.get_secret_value(SecretId=proxy.secret_arn)["SecretString"])
    if proxy.target_cluster:
        return _read_cluster(rds, proxy.target_cluster, secret)
    instance = rds.describe_db_instances(DBInstanceIdentifier=proxy.target_instance)["DBInstances"][0]
    endpoint = instance.get("Endpoint") or {}
    multi_az = bool(instance.get("MultiAZ"))
    return AppliedDatabase(
        identifier=proxy.target_instance,
        db_name=instance.get("DBName") or "postgres",
        username=secret["username"],
        password=secret["password"],
        address=str(endpoint.get("Address") or ""),
        port=int(endpoint.get("Port") or POSTGRES_PORT),
        iam_database_authentication=bool(instance.get("IAMDatabaseAuthenticationEnabled", False)),
        kind="multi-az" if multi_az else "single",
        # The standby has no endpoint of its own in AWS; the twin names it after the instance.
        instances=(proxy.target_instance, f"{proxy.target_instance}-standby") if multi_az else (),
    )


def _read_cluster(rds: Any, identifier: str, secret: Mapping[str, str]) -> AppliedDatabase:
    """An Aurora cluster (aws_rds_cluster with aws_rds_cluster_instance), or a Multi-AZ DB cluster
    (its standbys are readable too): a writer and its replicas."""
    cluster = rds.describe_db_clusters(DBClusterIdentifier=identifier)["DBClusters"][0]
    members = cluster.get("DBClusterMembers") or []
    writers = [m["DBInstanceIdentifier"] for m in members if m.get("IsClusterWriter")]
    readers = sorted(m["DBInstanceIdentifier"] for m in members if not m.get("IsClusterWriter"))
    if len(writers) != 1 or not readers:
        raise ValueError(
            f"cluster {identifier} has {len(writers)} writer and {len(readers)} reader instances "
            "(aws_rds_cluster_instance); the local twin runs a cluster as a writer and at least one "
            "replica, so it needs two instances or more"
        )
    return AppliedDatabase(
        identifier=identifier,
        db_name=cluster.get("DatabaseName") or "postgres",
        username=secret["username"],
        password=secret["password"],
        address=str(cluster.get("Endpoint") or ""),
        port=int(cluster.get("Port") or POSTGRES_PORT),
        kind="aurora",
        instances=(writers[0], *readers),
        reader_address=str(cluster.get("ReaderEndpoint") or ""),
        iam_database_authentication=bool(cluster.get("IAMDatabaseAuthenticationEnabled", False)),
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
        region=config["FunctionArn"].split(":")[3],
        arn=config["FunctionArn"],
    )


@dataclass(frozen=True)
class LocalAddress:
    """An endpoint of the applied stack and where it is on this machine."""

    remote_host: str
    remote_port: int
    host: str
    port: int


# Names of variables that hold a host, whose sibling <PREFIX>_PORT holds its port.
_HOST_SUFFIX = re.compile(r"_(HOST|HOSTNAME|ENDPOINT|ADDRESS|ADDR)$")


def map_endpoints(variables: Mapping[str, str], addresses: Sequence[LocalAddress]) -> dict[str, str]:
    """A function's environment with the applied endpoints replaced by their local addresses.

    A variable whose value is an endpoint's host name becomes the local host; a value that contains
    it (`host:5432`, a connection URL) has the host, and the port after it, replaced. The port
    variable beside a mapped host variable (DB_HOST -> DB_PORT, DB_PROXY_ENDPOINT -> DB_PROXY_PORT)
    gets the local port; failing that, any *PORT variable equal to the endpoint's port does.
    """
    result = dict(variables)
    mapped: list[tuple[str, LocalAddress]] = []
    for name, value in variables.items():
        for address in addresses:
            if not address.remote_host or address.remote_host not in value:
                continue
            if value == address.remote_host:
                result[name] = address.host
            else:
                remote = f"{address.remote_host}:{address.remote_port}"
                result[name] = value.replace(remote, f"{address.host}:{address.port}").replace(
                    address.remote_host, address.host
                )
            mapped.append((name, address))
            break
    ports_done: set[str] = set()
    for name, address in mapped:
        prefix = _HOST_SUFFIX.sub("", name)
        for candidate in (f"{prefix}_PORT", f"{prefix}PORT"):
            if candidate != name and variables.get(candidate) == str(address.remote_port):
                result[candidate] = str(address.port)
                ports_done.add(candidate)
    if mapped:
        first = mapped[0][1]
        for name, value in variables.items():
            if name not in ports_done and name.endswith("PORT") and value == str(first.remote_port):
                result[name] = str(first.port)
    return result


@dataclass(frozen=True)
class AppliedStack:
    """Everything the local twin takes from an applied Terraform stack."""

    outputs: dict[str, Any]
    proxy: AppliedProxy
    database: AppliedDatabase
    functions: tuple[AppliedFunction, ...]

    @property
    def function(self) -> AppliedFunction:
        """The first function (the only one in the kit's example)."""
        return self.functions[0]

    def local_addresses(
        self,
        *,
        proxy: tuple[str, int],
        postgres: tuple[str, int],
        proxy_endpoints: Mapping[str, tuple[str, int]] | None = None,
        reader: tuple[str, int] | None = None,
    ) -> list[LocalAddress]:
        """The proxy's endpoints map to the local proxy's (each to its own listener when the proxy
        has one by that name, else to the default one), the database's to the local database's
        (writer, and a cluster's reader endpoint to the local reader endpoint)."""
        local_endpoints = proxy_endpoints or {}
        addresses = [LocalAddress(self.proxy.endpoint, POSTGRES_PORT, *proxy)]
        addresses += [
            LocalAddress(endpoint.host, POSTGRES_PORT, *local_endpoints.get(endpoint.name, proxy))
            for endpoint in self.proxy.endpoints
            if endpoint.host
        ]
        if self.database.address:
            addresses.append(LocalAddress(self.database.address, self.database.port, *postgres))
        if self.database.reader_address:
            addresses.append(
                LocalAddress(self.database.reader_address, self.database.port, *(reader or postgres))
            )
        return addresses
