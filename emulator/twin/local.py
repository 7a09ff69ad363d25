"""LocalTwin: the stack, your Lambda functions on it and Lambda's API, as one object.

`with LocalTwin(handler="orders.handler", code="function", init_sql="schema") as twin:` starts
PostgreSQL, the AWS API emulator and the proxy (running your schema), then your functions behind
Lambda's API; leaving the block stops everything, newest first. The options are `up`'s (see
TwinOptions), so the command line, Python code and the pytest plugin start the same twin.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from emulator.awslambda.function import FunctionConfig, Invocation, LambdaFunction
from emulator.awslambda.invoke_api import InvokeApi
from emulator.errors import ComponentError
from emulator.lifecycle import Started
from emulator.stack.cluster import FailoverReport, read_topology
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.pgbouncer import PgBouncer
from emulator.stack.postgres import count_backends
from emulator.stack.rdsproxy import RdsProxyEmulator
from emulator.stack.rotation import Rotated, rotate_stack_secret
from emulator.tools.activity import established_connections
from emulator.tools.burst import BurstResult, invoke_burst
from emulator.twin.config import FunctionsFor, TwinConfig, twin_functions
from emulator.twin.endpoints import ConnectionParams
from emulator.twin.logs import Checkpoint, TwinLogs, end_of, read_since
from emulator.twin.options import TwinOptions, twin_config
from emulator.twin.pins import Pin, pins_in
from emulator.twin.stats import Connections, ProxyStats
from emulator.wait import wait_until

if TYPE_CHECKING:
    from botocore.config import Config

# How long the proxy may take to notice that recycled environments' connections closed.
RECYCLE_SETTLE_SECONDS = 10.0


class LocalTwin(Started):
    """The local twin. Give it `up`'s options by name (TwinOptions), or a TwinConfig."""

    def __init__(
        self,
        config: TwinConfig | StackConfig | None = None,
        /,
        *,
        functions_for: FunctionsFor | None = None,
        **options: Unpack[TwinOptions],
    ) -> None:
        if options and config is not None:
            raise TypeError("LocalTwin takes a TwinConfig or options by name, not both")
        if options:
            twin = twin_config(options)
        else:
            twin = config if isinstance(config, TwinConfig) else TwinConfig(stack=config or StackConfig())
        self.twin_config = twin
        self.config = twin.stack
        self._functions_for = functions_for or twin_functions(twin)
        self._running = contextlib.ExitStack()
        self.functions: dict[str, LambdaFunction] = {}
        self.function_configs: list[FunctionConfig] = []

    def start(self) -> None:
        _refuse_in_an_environment_importing_the_script()
        running = self._running
        self.stack = running.enter_context(EmbeddedStack(self.config))
        self.function_configs = list(self._functions_for(self.stack))
        for function in self.function_configs:
            self.functions[function.name] = running.enter_context(LambdaFunction(function))
        self.invoke_api = InvokeApi(self.functions, forward_to=self.stack.aws.endpoint_url)
        self.invoke_api.start()
        running.callback(self.invoke_api.stop)

    def stop(self) -> None:
        self._running.close()

    # -- reaching it ----------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """Everything another shell needs (what `up --env-file` writes): the stack's variables, and
        boto3's Lambda endpoint with the (first) function's name."""
        return {
            **self.stack.environment(),
            # boto3's Lambda client goes here (the twin's functions; the rest is forwarded to moto).
            "AWS_ENDPOINT_URL_LAMBDA": self.invoke_api.endpoint_url,
            "LAMBDA_FUNCTION_NAME": self.function_configs[0].name,
            "LAMBDA_FUNCTION_NAMES": ",".join(function.name for function in self.function_configs),
        }

    def lambda_client(self, config: Config | None = None) -> Any:
        """boto3's Lambda client for the twin's functions (every other Lambda call reaches moto)."""
        import boto3  # noqa: PLC0415 - `up` itself runs without the SDK

        credentials = self.stack.aws.credentials
        return boto3.session.Session().client(
            "lambda",
            endpoint_url=self.invoke_api.endpoint_url,
            region_name=credentials.region,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            config=config,
        )

    def proxy_params(self) -> ConnectionParams:
        """How a client reaches the database through the proxy, as your functions do: with a fresh
        IAM token as the password when the proxy requires IAM auth, else the secret's password."""
        stack = self.stack
        proxy = stack.proxy
        iam = proxy.handler_auth == "iam"
        return ConnectionParams(
            host=proxy.host,
            port=proxy.port,
            dbname=stack.config.database,
            user=stack.config.db_user,
            password=self.iam_token() if iam else stack.db_password,
            sslmode="require" if proxy.tls else "prefer",
            sslrootcert=str(stack.ca_file) if stack.ca_file else None,
        )

    def database_params(self) -> ConnectionParams:
        """How a client reaches PostgreSQL itself, without the proxy (for checking what the
        functions did; every connection here is one of max_connections)."""
        stack = self.stack
        postgres = stack.postgres
        return ConnectionParams(
            host=postgres.host,
            port=postgres.port,
            dbname=stack.config.database,
            user=stack.config.db_user,
            password=stack.db_password,
            sslmode="require" if postgres.tls else "prefer",
            sslrootcert=str(stack.ca_file) if stack.ca_file else None,
        )

    def iam_token(self, user: str | None = None) -> str:
        """An IAM auth token for the proxy's endpoint, made by boto3 as your functions make it
        (generate_db_auth_token), signed with the twin's credentials."""
        credentials = self.stack.aws.credentials
        import boto3  # noqa: PLC0415 - `up` itself runs without the SDK

        rds = boto3.session.Session().client(
            "rds",
            region_name=credentials.region,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
        )
        token: str = rds.generate_db_auth_token(
            DBHostname=self.stack.proxy.host,
            Port=self.stack.proxy.port,
            DBUsername=user or self.stack.config.db_user,
            Region=credentials.region,
        )
        return token

    # -- running functions ----------------------------------------------------------------------

    def function(self, name: str) -> LambdaFunction:
        found = self.functions.get(name)
        if found is None:
            known = ", ".join(self.functions)
            raise ComponentError("Lambda", f"the twin runs no function {name!r}", f"it runs: {known}")
        return found

    def invoke(self, name: str, payload: Any = None) -> Invocation:
        """One invocation, as Lambda's Invoke (RequestResponse) runs it: a warm environment if one is
        frozen, else a cold start. The result's json() is the payload; function_error is set when it
        failed (Lambda's FunctionError), and log holds its START ... REPORT lines."""
        return self.function(name).invoke({} if payload is None else payload)

    def invoke_burst(self, name: str, invocations: int, payload: Any = None) -> BurstResult:
        """`invocations` concurrent invocations released together, as a burst arrives: each finds no
        free environment and cold-starts one (up to the concurrency limit; beyond it, Lambda's
        TooManyRequestsException), whose connection then stays open while it is frozen."""
        event: Mapping[str, Any] = {} if payload is None else payload
        return invoke_burst(self.function(name), invocations, event)

    def recycle(self) -> int:
        """End every idle execution environment now, as Lambda does when it recycles them: their
        connections close and the next invocations cold-start. Returns how many ended, once the
        proxy has seen their clients go."""
        ended = sum(function.recycle() for function in self.functions.values())
        emulator = self.stack.proxy
        if ended and isinstance(emulator, RdsProxyEmulator):
            wait_until(
                lambda: (
                    emulator.stats()["client_connections"]
                    <= (established_connections(emulator.port, emulator.host) or 0)
                ),
                component="RDS Proxy emulator (seeing recycled environments' clients close)",
                timeout=RECYCLE_SETTLE_SECONDS,
            )
        return ended

    # -- failover -------------------------------------------------------------------------------

    def failover(self, to: str | None = None) -> FailoverReport:
        """Fail the database over (twins started with cluster='aurora' or 'multi-az'): the writer is
        fenced (its connections drop), a replica (`to`, or the most advanced one) promoted and the
        others repointed; the proxy finds the new writer itself, the database's endpoints after the
        DNS TTL (dns_ttl). The report says who became the writer and how long each step took. The
        old writer rejoins as a replica in the background (wait_rejoined())."""
        return self.stack.failover(to)

    def wait_rejoined(self, timeout: float | None = None) -> None:
        """Wait until the instances the last failover fenced are replicas again, and the RDS Proxy
        emulator follows the new writer (a proxy that held no connection to the old one finds out by
        asking the instances, every 5 s)."""
        cluster = self.stack.cluster
        if cluster is None:
            return
        cluster.wait_rejoined(timeout)
        proxy = self.stack.proxy
        if isinstance(proxy, RdsProxyEmulator):
            writer = cluster.writer.name
            wait_until(
                lambda: proxy.stats()["target_writer"] == writer,
                component=f"RDS Proxy emulator (following the writer {writer})",
                timeout=30 if timeout is None else timeout,
            )

    def topology(self) -> dict[str, Any]:
        """The database's instances and their roles now (what the topology file says)."""
        return read_topology(self.stack.topology_path)

    # -- what happened --------------------------------------------------------------------------

    def rotate_secret(self) -> Rotated:
        """Rotate the proxy's secret as Secrets Manager's single-user rotation does (a new password
        in the secret and on the database role); returns once the proxy reads the new version."""
        return rotate_stack_secret(self.stack)

    def _emulator(self, what: str) -> RdsProxyEmulator:
        proxy = self.stack.proxy
        if not isinstance(proxy, RdsProxyEmulator):
            raise ComponentError(
                "RDS Proxy emulator",
                f"{what} come from the RDS Proxy emulator, and this twin runs proxy {proxy.kind!r}",
                "start the twin with proxy='emulator' (the default)",
            )
        return proxy

    def stats(self) -> ProxyStats:
        """The emulator's counters now (its /stats)."""
        return ProxyStats.from_json(self._emulator("stats").stats())

    def reset_peaks(self) -> None:
        """Start the peaks in stats() again from the current values."""
        self._emulator("peaks").reset_peaks()

    def connections(self) -> Connections:
        """Client connections to the proxy and the database's connections now, counted outside the
        proxy (the kernel's socket table, pg_stat_activity), so every proxy is counted alike."""
        stack = self.stack
        clients = established_connections(stack.proxy.port, stack.proxy.host)
        if clients is None:
            raise ComponentError("connection counts", "no /proc/net/tcp to count connections in", "use Linux")
        with stack.postgres.admin_connection() as conn:
            database = count_backends(conn, user=stack.config.db_user, database=stack.config.database)
        proxy = stack.proxy
        cap: int | None = None
        if isinstance(proxy, RdsProxyEmulator):
            cap = int(proxy.stats()["max_database_connections_allowed"])
        elif isinstance(proxy, PgBouncer):
            cap = stack.config.pool_size
        return Connections(client=clients, database=database, cap=cap)

    def checkpoint(self) -> Checkpoint:
        """Where the logs end now: logs(since=...) and pins(since=...) read what came after."""
        return Checkpoint(function_log=end_of(self._function_log()), proxy_log=end_of(self._proxy_log()))

    def logs(self, since: Checkpoint | None = None) -> TwinLogs:
        """What the functions and the proxy logged since a checkpoint (or since the start), whole
        lines only. The functions' log is read only when it goes to a file (function_log)."""
        since = since or Checkpoint()
        functions, function_end = read_since(self._function_log(), since.function_log)
        proxy, proxy_end = read_since(self._proxy_log(), since.proxy_log)
        return TwinLogs(
            functions=functions,
            proxy=proxy,
            pins=tuple(pins_in(proxy)),
            until=Checkpoint(function_log=function_end, proxy_log=proxy_end),
        )

    def pins(self, since: Checkpoint | None = None) -> list[Pin]:
        """The sessions the proxy pinned since a checkpoint (or since the start), with RDS Proxy's
        reason and the statement's digest, as its log says."""
        self._emulator("pins")
        return list(self.logs(since).pins)

    def _function_log(self) -> Path | None:
        return self.twin_config.function_log

    def _proxy_log(self) -> Path | None:
        proxy = self.stack.proxy
        return proxy.log_path if isinstance(proxy, RdsProxyEmulator) else None


def _refuse_in_an_environment_importing_the_script() -> None:
    """Execution environments are started by multiprocessing's forkserver, which imports the main
    script into each (as `__mp_main__`), as multiprocessing's spawn does: a script that starts a twin
    at its top level would start one more in every environment."""
    # multiprocessing marks a new process while it prepares it, importing the script as `__mp_main__`,
    # before the process's own work begins; its own check for starting processes meanwhile reads the
    # same flag (private, hence looked up).
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise ComponentError(
            "LocalTwin",
            "a Lambda execution environment is importing your script, which starts a twin at its top level",
            'start the twin under `if __name__ == "__main__":` in a script (multiprocessing\'s rule)',
        )
