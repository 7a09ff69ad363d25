"""The local twin as a stage target: the embedded stack with the stage's proxy settings, the handler
and the probe as Lambda functions behind the Invoke API, and the AWS API emulator for the rest."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

from botocore.config import Config

from emulator.awslambda.function import FunctionConfig
from emulator.stack.embedded import DEFAULT_PROXY_SETTINGS, EmbeddedStack, StackConfig
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.stage.target import STAGE_PROXY_SETTINGS, StageTarget
from emulator.twin import LocalTwin

# PostgreSQL's max_connections locally: near a db.t4g.micro's (about 80), so 5 % is a pool of 5.
LOCAL_MAX_CONNECTIONS = 100
# The emulator publishes its metrics and log lines this often (RDS Proxy: every minute, late).
LOCAL_METRICS_PERIOD = 2
LOCAL_METRICS_DEADLINE = 60.0


@contextlib.contextmanager
def local_target() -> Iterator[StageTarget]:
    config = StackConfig(
        max_connections=LOCAL_MAX_CONNECTIONS,
        proxy_settings={
            **DEFAULT_PROXY_SETTINGS,
            **STAGE_PROXY_SETTINGS,
            "metrics_period_seconds": LOCAL_METRICS_PERIOD,
        },
    )
    with LocalTwin(config, functions_for=_stage_functions) as twin:
        stack = twin.stack
        proxy = stack.proxy
        assert isinstance(proxy, RdsProxyEmulator)
        handler, probe = twin.function_configs
        # The probe holds sessions past the borrow timeout; the default read timeout is 60 s.
        lambda_client = twin.lambda_client(Config(read_timeout=180, retries={"max_attempts": 1}))
        outputs = {
            "proxy_name": proxy.config.name,
            "lambda_function_name": handler.name,
            "probe_function_name": probe.name,
            "proxy_log_group": f"/aws/rds/proxy/{proxy.config.name}",
            "db_username": stack.config.db_user,
        }
        yield StageTarget(
            name="local",
            outputs=outputs,
            client=lambda service: lambda_client if service == "lambda" else stack.aws.client(service),
            metrics_deadline=LOCAL_METRICS_DEADLINE,
            poll_seconds=1.0,
        )


def _stage_functions(stack: EmbeddedStack) -> list[FunctionConfig]:
    """The handler and the probe, as the stage's Terraform declares them."""
    # Snapshot Init (one warm-up, then forked environments) keeps a burst's cold starts short on
    # a small machine; what the scenarios compare does not depend on Init.
    handler = FunctionConfig(
        name="local-twin-fn",
        environment=stack.handler_environment(),
        init="snapshot",
        # The functions' log (START/END/REPORT and what they print), beside the stack's others.
        log_path=stack.workdir / "functions.log",
    )
    probe = replace(handler, name="local-twin-probe", handler="probe.handler", timeout_seconds=120)
    return [handler, probe]
