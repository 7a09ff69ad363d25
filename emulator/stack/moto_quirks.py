"""Where moto answers differently from AWS in ways the kit's Terraform stack meets, and the fixes.

moto keeps its state per Python process, and the kit runs it in-process, so these patches apply
to the kit's own AWS emulator only. Each one makes moto answer as AWS does; none changes the .tf.
A target group's idle share above its pool share is refused, as AWS refuses it; a target's health
is what the emulator serving it sees, not always AVAILABLE. Handled elsewhere:
AWS managed policies need MOTO_IAM_LOAD_MANAGED_POLICIES=true (emulator.stack.moto);
moto has no DB proxy endpoints (the kit's stack declares none) and no ModifyDBProxy (changing a
proxy's auth or TLS needs a new apply, not an update: README, "moto's quirks").
"""

from __future__ import annotations

import secrets
import string
import sys
import threading
from collections.abc import Callable
from typing import Any

_applied = False
_lock = threading.Lock()


def apply_moto_quirk_fixes() -> None:
    """Every fix is to moto's RDS backend, whose import costs seconds (it loads EC2's models): the
    fixes are applied when moto first loads it (the first RDS request), not when moto starts."""
    global _applied  # noqa: PLW0603 - patch once per process
    with _lock:
        if _applied:
            return
        _applied = True
        if "moto.rds.models" in sys.modules:
            _fix_rds()
            return
        from moto import backends  # noqa: PLC0415 - only with moto's server

        import_backend = backends._import_backend  # the one place moto loads a backend

        def _import_backend(module_name: str, backends_name: str) -> Any:
            loaded: Any = import_backend(module_name, backends_name)
            # RDS's own backend, or another one that imports it (resource tagging, Neptune...).
            if "moto.rds.models" in sys.modules:
                _fix_rds()
            return loaded

        backends._import_backend = _import_backend


_rds_fixed = False
_rds_lock = threading.Lock()


def _fix_rds() -> None:
    global _rds_fixed  # noqa: PLW0603 - patch once per process
    with _rds_lock:
        if _rds_fixed:
            return
        _rds_fixed = True
        _unique_db_instance_resource_ids()
        _keep_the_init_query()
        _idle_share_within_the_pool()
        _target_health_follows_the_proxy()


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
