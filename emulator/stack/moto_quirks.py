"""Where moto answers differently from AWS in ways the kit's Terraform stack meets, and the fixes.

moto keeps its state per Python process, and the kit runs it in-process, so these patches apply
to the kit's own AWS emulator only. Each one makes moto answer as AWS does; none changes the .tf.
A target group's idle share above its pool share is refused, as AWS refuses it; a target's health
is what the emulator serving it sees, not always AVAILABLE. Handled elsewhere:
AWS managed policies need MOTO_IAM_LOAD_MANAGED_POLICIES=true (emulator.stack.moto);
moto has no ModifyDBProxy (changing a proxy's auth or TLS needs a new apply, not an update: README,
"moto's quirks"). moto (5.2) has no DB proxy endpoints at all: the kit adds them
(_proxy_endpoints), so that aws_db_proxy_endpoint applies and reads back. Secrets Manager:
GetSecretValue without a stage returns the AWSCURRENT version, also after a rotation moved it.
CloudWatch: ListMetrics names each metric (namespace, name, dimensions) once, in time linear in the
data points; moto listed a metric with two or more dimensions once per data point, after a scan
quadratic in them (a stack publishing every second made it time out within the hour).
"""

from __future__ import annotations

import datetime
import secrets
import string
import sys
import threading
from collections.abc import Callable
from typing import Any

_applied = False
_lock = threading.Lock()


def apply_moto_quirk_fixes() -> None:
    """The fixes are to moto's RDS, Secrets Manager and CloudWatch backends; RDS's import costs
    seconds (it loads EC2's models): each backend is fixed when moto first loads it (its first
    request), not when moto starts."""
    global _applied  # noqa: PLW0603 - patch once per process
    with _lock:
        if _applied:
            return
        _applied = True
        if _fix_loaded_backends():
            return
        from moto import backends  # noqa: PLC0415 - only with moto's server

        import_backend = backends._import_backend  # the one place moto loads a backend

        def _import_backend(module_name: str, backends_name: str) -> Any:
            loaded: Any = import_backend(module_name, backends_name)
            # The backend itself, or another one that imports it (resource tagging, Neptune...).
            _fix_loaded_backends()
            return loaded

        backends._import_backend = _import_backend


def _fix_loaded_backends() -> bool:
    """Fix the backends moto has loaded; whether every backend the kit fixes is loaded."""
    with _fix_lock:
        for module, fixes in _FIXES.items():
            if module in sys.modules and module not in _fixed:
                _fixed.add(module)
                for fix in fixes():
                    fix()
        return _fixed.issuperset(_FIXES)


def _rds_fixes() -> list[Callable[[], None]]:
    return [
        _unique_db_instance_resource_ids,
        _keep_the_init_query,
        _idle_share_within_the_pool,
        _target_health_follows_the_proxy,
        _proxy_endpoints,
    ]


# Each fixed backend's models module, and its fixes (a function, since they are defined below).
_FIXES: dict[str, Callable[[], list[Callable[[], None]]]] = {
    "moto.rds.models": _rds_fixes,
    "moto.secretsmanager.models": lambda: [_current_version_follows_awscurrent],
    "moto.cloudwatch.models": lambda: [_each_metric_listed_once],
}
_fixed: set[str] = set()  # patched once per process
_fix_lock = threading.RLock()  # a fix may import a module that loads another backend


def _each_metric_listed_once() -> None:
    """moto deduplicates ListMetrics by comparing each data point with every metric found so far, and
    its comparison (are_dimensions_same) only holds for one dimension: a proxy's metrics, with two to
    four, came back once per data point. AWS lists a metric once; a dictionary keyed by what names
    a metric does that in one pass."""
    from moto.cloudwatch.models import CloudWatchBackend, Dimension  # noqa: PLC0415

    def get_filtered_metrics(
        self: Any, metric_name: str, namespace: str, dimensions: list[dict[str, str]]
    ) -> list[Any]:
        wanted = [Dimension(d["Name"], d.get("Value")) for d in dimensions or []]
        found: dict[tuple[str, str, frozenset[tuple[str, str]]], Any] = {}
        for datum in self.get_all_metrics():
            if (namespace and namespace != datum.namespace) or (metric_name and metric_name != datum.name):
                continue
            if any(dimension not in datum.dimensions for dimension in wanted):
                continue
            key = (datum.namespace, datum.name, frozenset((d.name, d.value) for d in datum.dimensions))
            found.setdefault(key, datum)
        return list(found.values())

    CloudWatchBackend.get_filtered_metrics = get_filtered_metrics  # type: ignore[method-assign]


def _current_version_follows_awscurrent() -> None:
    """moto's UpdateSecretVersionStage moves the AWSCURRENT label but not the version that
    GetSecretValue returns without a VersionId or VersionStage, so after a rotation such a read
    still returned the old password. In AWS the default is AWSCURRENT, wherever it is."""
    from moto.secretsmanager.models import SecretsManagerBackend  # noqa: PLC0415

    update = SecretsManagerBackend.update_secret_version_stage

    def update_secret_version_stage(
        self: Any, secret_id: str, version_stage: str, remove_from_version_id: str, move_to_version_id: str
    ) -> tuple[str, str]:
        moved: tuple[str, str] = update(
            self, secret_id, version_stage, remove_from_version_id, move_to_version_id
        )
        if version_stage == "AWSCURRENT" and move_to_version_id:
            self.secrets[secret_id].set_default_version_id(move_to_version_id)
        return moved

    SecretsManagerBackend.update_secret_version_stage = update_secret_version_stage  # type: ignore[method-assign]


# The live state of each proxy target the twin runs, by DB instance identifier: is it available, and
# if not, why. Registered by the stack for the emulator that serves the applied proxy.
TargetHealthProbe = Callable[[], tuple[bool, str]]
TARGET_HEALTH: dict[str, TargetHealthProbe] = {}


def _target_health_follows_the_proxy() -> None:
    """moto reports every proxy target AVAILABLE. describe_db_proxy_targets in AWS says what the proxy
    sees: UNAVAILABLE with a reason while it cannot reach the database."""
    from moto.rds.models import DBProxyTarget  # noqa: PLC0415

    reported = DBProxyTarget.target_health.fget  # type: ignore[attr-defined]

    def target_health(self: Any) -> dict[str, str]:
        probe = TARGET_HEALTH.get(self.rds_resource_id)
        if probe is None:
            health: dict[str, str] = reported(self)
            return health
        try:
            available, reason = probe()
        except Exception as exc:  # noqa: BLE001 - a proxy that does not answer is not available
            available, reason = False, f"the proxy does not answer: {exc}"
        if available:
            return {"State": "AVAILABLE"}
        return {"State": "UNAVAILABLE", "Reason": "UNREACHABLE", "Description": reason}

    DBProxyTarget.target_health = property(target_health)  # type: ignore[method-assign,assignment]


def _unique_db_instance_resource_ids() -> None:
    """moto gives every DB instance the resource id db-M5ENSHXFPU6XHZ4G4ZEI5QIO2U. The AWS provider
    reads an instance back by that id, so two applied stacks in one process would read each
    other's instance. AWS makes them unique; so does the kit."""
    from moto.rds.models import DBInstance  # noqa: PLC0415 - only with moto's server

    original = DBInstance.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        alphabet = string.ascii_uppercase + string.digits
        self.dbi_resource_id = "db-" + "".join(secrets.choice(alphabet) for _ in range(26))

    DBInstance.__init__ = __init__  # type: ignore[method-assign]


def _keep_the_init_query() -> None:
    """moto's ModifyDBProxyTargetGroup drops ConnectionPoolConfig.InitQuery and its Describe never
    returns one, so the proxy's init_query would be lost between Terraform and the emulator."""
    from moto.rds.models import DBProxyTargetGroup, RDSBackend  # noqa: PLC0415

    modify = RDSBackend.modify_db_proxy_target_group

    def modify_db_proxy_target_group(self: Any, proxy_name: str, config: dict[str, Any]) -> Any:
        group = modify(self, proxy_name, config)
        if "InitQuery" in config:
            group.init_query = config["InitQuery"]  # type: ignore[attr-defined]
        return group

    pool_config = DBProxyTargetGroup.connection_pool_config.fget  # type: ignore[attr-defined]

    def connection_pool_config(self: Any) -> dict[str, Any]:
        config: dict[str, Any] = pool_config(self)
        if getattr(self, "init_query", ""):
            config["InitQuery"] = self.init_query
        return config

    RDSBackend.modify_db_proxy_target_group = modify_db_proxy_target_group  # type: ignore[method-assign]
    DBProxyTargetGroup.connection_pool_config = property(connection_pool_config)  # type: ignore[assignment,method-assign]


def _idle_share_within_the_pool() -> None:
    """AWS refuses a target group whose MaxIdleConnectionsPercent exceeds its MaxConnectionsPercent
    (the API's constraint: between 0 and MaxConnectionsPercent); moto stores it. The AWS provider
    sends its default idle share, 50, when a configuration sets only max_connections_percent, so
    such a configuration would apply locally and fail in AWS: it fails locally too, at the apply."""
    from moto.rds.exceptions import InvalidParameterValue  # noqa: PLC0415
    from moto.rds.models import RDSBackend  # noqa: PLC0415

    modify = RDSBackend.modify_db_proxy_target_group

    def modify_db_proxy_target_group(self: Any, proxy_name: str, config: dict[str, Any]) -> Any:
        group = self.db_proxies[proxy_name].proxy_target_groups["default"]
        pool = int(config.get("MaxConnectionsPercent") or group.max_connections)
        idle = config.get("MaxIdleConnectionsPercent")
        if idle is not None and int(idle) > pool:
            raise InvalidParameterValue(
                f"MaxIdleConnectionsPercent ({idle}) must be between 0 and MaxConnectionsPercent ({pool})"
            )
        return modify(self, proxy_name, config)

    RDSBackend.modify_db_proxy_target_group = modify_db_proxy_target_group  # type: ignore[method-assign]


class DBProxyEndpoint:
    """A proxy's additional endpoint (CreateDBProxyEndpoint), as DescribeDBProxyEndpoints shows it."""

    resource_type = "db-proxy-endpoint"

    def __init__(self, proxy: Any, name: str, params: dict[str, Any]) -> None:
        self.proxy = proxy
        self.name = name
        self.target_role = params.get("TargetRole") or "READ_WRITE"
        self.vpc_subnet_ids = list(params.get("VpcSubnetIds") or proxy.vpc_subnet_ids)
        self.vpc_security_group_ids = list(params.get("VpcSecurityGroupIds") or proxy.vpc_security_group_ids)
        self.tags: list[dict[str, str]] = list(params.get("Tags") or [])
        alphabet = string.ascii_lowercase + string.digits
        self.arn = (
            f"arn:aws:rds:{proxy.region}:{proxy.backend.account_id}:db-proxy-endpoint:"
            f"prx-endpoint-{''.join(secrets.choice(alphabet) for _ in range(17))}"
        )
        # As AWS names them: <endpoint>.endpoint.proxy-<id>.<region>.rds.amazonaws.com.
        self.endpoint = f"{name}.endpoint.proxy-{proxy.url_identifier}.{proxy.region}.rds.amazonaws.com"
        self.created = datetime.datetime.now(datetime.UTC)

    def describe(self, status: str = "available") -> dict[str, Any]:
        return {
            "DBProxyEndpointName": self.name,
            "DBProxyEndpointArn": self.arn,
            "DBProxyName": self.proxy.db_proxy_name,
            "Status": status,
            "VpcId": self.proxy.vpc_id,
            "VpcSecurityGroupIds": self.vpc_security_group_ids,
            "VpcSubnetIds": self.vpc_subnet_ids,
            "Endpoint": self.endpoint,
            "CreatedDate": self.created,
            "TargetRole": self.target_role,
            "IsDefault": False,
        }

    def get_tags(self) -> list[dict[str, str]]:
        return self.tags

    def add_tags(self, tags: list[dict[str, str]]) -> list[dict[str, str]]:
        keys = {tag["Key"] for tag in tags}
        self.tags = [tag for tag in self.tags if tag["Key"] not in keys] + list(tags)
        return self.tags

    def remove_tags(self, keys: list[str]) -> None:
        self.tags = [tag for tag in self.tags if tag["Key"] not in keys]


def _default_endpoint(proxy: Any) -> dict[str, Any]:
    """The proxy's own endpoint, which DescribeDBProxyEndpoints lists too (IsDefault)."""
    return {
        "DBProxyEndpointName": "default",
        "DBProxyName": proxy.db_proxy_name,
        "Status": "available",
        "VpcId": proxy.vpc_id,
        "VpcSecurityGroupIds": proxy.vpc_security_group_ids,
        "VpcSubnetIds": proxy.vpc_subnet_ids,
        "Endpoint": proxy.endpoint,
        "CreatedDate": proxy.created_date,
        "TargetRole": "READ_WRITE",
        "IsDefault": True,
    }


def _endpoints(backend: Any) -> dict[str, DBProxyEndpoint]:
    """The backend's proxy endpoints by name (kept on the backend: moto's state is per backend)."""
    store: dict[str, DBProxyEndpoint] | None = getattr(backend, "db_proxy_endpoints_of_the_twin", None)
    if store is None:
        store = {}
        backend.db_proxy_endpoints_of_the_twin = store
    return store


def _find_endpoint(backend: Any, name: str) -> DBProxyEndpoint:
    from moto.rds.exceptions import RDSClientError  # noqa: PLC0415

    found = _endpoints(backend).get(name)
    if found is None:
        raise RDSClientError("DBProxyEndpointNotFoundFault", f"The DB proxy endpoint {name} doesn't exist.")
    return found


def _proxy_endpoints() -> None:
    """CreateDBProxyEndpoint, DescribeDBProxyEndpoints, ModifyDBProxyEndpoint, DeleteDBProxyEndpoint
    and tags on an endpoint's ARN, which moto lacks. Errors carry RDS's fault codes (the API
    reference's); their texts are the kit's, as RDS's are not documented."""
    _proxy_endpoint_actions()
    _proxy_endpoint_tags()


def _proxy_endpoint_actions() -> None:
    from moto.core.responses import ActionResult  # noqa: PLC0415
    from moto.rds.exceptions import DBProxyNotFoundFault, InvalidParameterValue, RDSClientError  # noqa: PLC0415
    from moto.rds.responses import RDSResponse  # noqa: PLC0415

    def create_db_proxy_endpoint(self: Any) -> Any:
        params = self._get_params()
        proxy_name, name = params.get("DBProxyName"), params.get("DBProxyEndpointName")
        proxy = self.backend.db_proxies.get(proxy_name)
        if proxy is None:
            raise DBProxyNotFoundFault(proxy_name)
        store = _endpoints(self.backend)
        if name in store or name == "default":
            raise RDSClientError(
                "DBProxyEndpointAlreadyExistsFault", f"A DB proxy endpoint named {name} already exists."
            )
        if params.get("TargetRole", "READ_WRITE") not in ("READ_WRITE", "READ_ONLY"):
            raise InvalidParameterValue(
                f"TargetRole must be READ_WRITE or READ_ONLY, not {params['TargetRole']}"
            )
        endpoint = DBProxyEndpoint(proxy, name, params)
        store[name] = endpoint
        return ActionResult({"DBProxyEndpoint": endpoint.describe()})

    def describe_db_proxy_endpoints(self: Any) -> Any:
        params = self._get_params()
        proxy_name, name = params.get("DBProxyName"), params.get("DBProxyEndpointName")
        if proxy_name is not None and proxy_name not in self.backend.db_proxies:
            raise DBProxyNotFoundFault(proxy_name)
        found = [_find_endpoint(self.backend, name)] if name else list(_endpoints(self.backend).values())
        described = [
            endpoint.describe()
            for endpoint in found
            if proxy_name is None or endpoint.proxy.db_proxy_name == proxy_name
        ]
        if name is None and proxy_name is not None:
            described.insert(0, _default_endpoint(self.backend.db_proxies[proxy_name]))
        return ActionResult({"DBProxyEndpoints": described})

    def modify_db_proxy_endpoint(self: Any) -> Any:
        params = self._get_params()
        store = _endpoints(self.backend)
        endpoint = _find_endpoint(self.backend, params.get("DBProxyEndpointName"))
        new_name = params.get("NewDBProxyEndpointName")
        if new_name and new_name != endpoint.name:
            store[new_name] = store.pop(endpoint.name)
            endpoint.name = new_name
        if params.get("VpcSecurityGroupIds"):
            endpoint.vpc_security_group_ids = list(params["VpcSecurityGroupIds"])
        return ActionResult({"DBProxyEndpoint": endpoint.describe()})

    def delete_db_proxy_endpoint(self: Any) -> Any:
        name = self._get_params().get("DBProxyEndpointName")
        endpoint = _find_endpoint(self.backend, name)
        del _endpoints(self.backend)[name]
        return ActionResult({"DBProxyEndpoint": endpoint.describe("deleting")})

    for handler in (
        create_db_proxy_endpoint,
        describe_db_proxy_endpoints,
        modify_db_proxy_endpoint,
        delete_db_proxy_endpoint,
    ):
        setattr(RDSResponse, handler.__name__, handler)


def _proxy_endpoint_tags() -> None:
    """An endpoint's ARN is a taggable resource (the AWS provider reads its tags after creating it)."""
    from moto.rds.models import RDSBackend  # noqa: PLC0415

    for_tagging = RDSBackend._get_resource_for_tagging

    def _get_resource_for_tagging(self: Any, arn: str) -> Any:
        if f":{DBProxyEndpoint.resource_type}:" in arn:
            return next((e for e in _endpoints(self).values() if e.arn == arn), None)
        return for_tagging(self, arn)

    RDSBackend._get_resource_for_tagging = _get_resource_for_tagging  # type: ignore[method-assign]
