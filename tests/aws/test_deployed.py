"""What the stage deployed, read back through the AWS APIs (AWS target only).

Marked `deployed`: it needs the resources, not code running in Lambda, so the stage's offline tests
run it against the AWS API emulator too.
"""

from __future__ import annotations

import pytest

from emulator.stage.target import StageTarget

pytestmark = [pytest.mark.aws, pytest.mark.deployed]


def test_the_proxy_runs_with_the_stage_settings(deployed: StageTarget) -> None:
    rds = deployed.client("rds")
    name = str(deployed.outputs["proxy_name"])
    [proxy] = rds.describe_db_proxies(DBProxyName=name)["DBProxies"]
    assert proxy["EngineFamily"] == "POSTGRESQL"
    assert proxy["RequireTLS"] is True
    assert proxy["DebugLogging"] is True  # the pin reasons the scenarios read
    assert [auth["IAMAuth"] for auth in proxy["Auth"]] == ["REQUIRED"]
    [group] = rds.describe_db_proxy_target_groups(DBProxyName=name)["TargetGroups"]
    pool = group["ConnectionPoolConfig"]
    assert (pool["MaxConnectionsPercent"], pool["ConnectionBorrowTimeout"]) == (5, 5)


def test_the_probe_is_deployed_beside_the_handler_and_both_carry_the_runs_tag(deployed: StageTarget) -> None:
    functions = deployed.client("lambda")
    probe = functions.get_function(FunctionName=deployed.probe_function)
    handler = functions.get_function(FunctionName=deployed.function)
    assert probe["Configuration"]["Handler"] == "probe.handler"
    assert handler["Configuration"]["Handler"] == "index.handler"
    prefix = str(deployed.outputs["proxy_name"]).removesuffix("-proxy")
    for answer in (probe, handler):
        assert answer["Tags"]["local-twin-stage"] == prefix
