"""LocalTwin as a user's code drives it: `up`'s options by name, then invocations, bursts, connection
parameters, counters, pins and logs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from emulator.errors import ComponentError
from emulator.twin import LocalTwin, TwinConfig
from emulator.twin.options import OptionError

HANDLER = """
import os

import boto3
import psycopg

_connection = None


def handler(event, context):
    global _connection
    if _connection is None:
        host, port, user = os.environ["DB_HOST"], int(os.environ["DB_PORT"]), os.environ["DB_USER"]
        token = boto3.client("rds").generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user)
        _connection = psycopg.connect(host=host, port=port, dbname=os.environ["DB_NAME"], user=user,
                                      password=token, sslmode="require", autocommit=True)
    print("greeting:", os.environ["GREETING"])
    if event.get("hold_ms"):
        _connection.execute("SELECT pg_sleep(%s)", (event["hold_ms"] / 1000,))
    return {"items": _connection.execute("SELECT count(*) FROM items").fetchone()[0]}
"""


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTwin]:
    project = tmp_path_factory.mktemp("project")
    (project / "function").mkdir()
    (project / "function" / "app.py").write_text(HANDLER)
    (project / "schema.sql").write_text(
        "CREATE TABLE items (name text);\nINSERT INTO items VALUES ('a'), ('b');\n"
    )
    with LocalTwin(
        handler="app.handler",
        code=project / "function",
        function_name="items",
        init_sql=project / "schema.sql",
        env={"DB_HOST": "${DB_PROXY_ENDPOINT}", "GREETING": "hello"},
        proxy_settings={"connection_borrow_timeout": 7},
        function_log=project / "functions.log",
    ) as twin:
        yield twin


@pytest.mark.unit
def test_a_configuration_or_options_by_name_not_both() -> None:
    with pytest.raises(TypeError, match="not both"):
        LocalTwin(TwinConfig(), handler="app.handler")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"proxy": "pgbouncr"}, "proxy is one of emulator, pgbouncer, direct, not 'pgbouncr'"),
        ({"max_connections": "x"}, "max_connections is a whole number, not 'x'"),
        ({"cluster": "auror"}, "cluster is one of single, aurora, multi-az, not 'auror'"),
    ],
)
def test_a_mistyped_option_is_an_option_error_before_anything_starts(
    options: dict[str, str], message: str
) -> None:
    with pytest.raises(OptionError, match=f"^{re.escape(message)}$"):
        LocalTwin(**options)  # type: ignore[arg-type]


@pytest.mark.integration
def test_your_function_runs_on_your_schema_behind_the_proxy_with_your_settings(twin: LocalTwin) -> None:
    invocation = twin.invoke("items")
    assert invocation.succeeded, invocation.payload
    assert invocation.json() == {"items": 2}
    assert b"greeting: hello" in invocation.log
    assert twin.stack.proxy.config.connection_borrow_timeout == 7  # type: ignore[attr-defined]


@pytest.mark.integration
def test_an_unknown_function_is_refused_with_the_names_the_twin_runs(twin: LocalTwin) -> None:
    with pytest.raises(ComponentError, match=r"runs no function 'orders'[\s\S]*it runs: items"):
        twin.invoke("orders", {})


@pytest.mark.integration
def test_clients_reach_the_database_through_the_proxy_with_an_iam_token_or_directly(twin: LocalTwin) -> None:
    through_proxy = twin.proxy_params()
    assert "Action=connect" in through_proxy.password  # an IAM token, as RDS Proxy requires
    with psycopg.connect(**through_proxy.kwargs()) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2,)
        assert twin.stats().client_connections >= 1
    direct = twin.database_params()
    with psycopg.connect(direct.conninfo()) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone() == (twin.stack.postgres.port,)


@pytest.mark.integration
def test_a_burst_shares_the_pool_and_the_counts_show_it(twin: LocalTwin) -> None:
    twin.recycle()
    twin.reset_peaks()
    burst = twin.invoke_burst("items", 12, {"hold_ms": 300})
    assert burst.succeeded == 12, burst.errors
    environments = len(twin.function("items").environments())
    stats = twin.stats()
    connections = twin.connections()
    # Every frozen environment keeps its client connection; the database sees the pool only.
    assert connections.client == environments == stats.client_connections
    assert stats.peak_client_connections >= environments > stats.max_database_connections_allowed == 5
    assert stats.peak_database_connections <= 5
    assert connections.database <= connections.cap == 5
    assert stats.borrows >= 12
    assert stats.borrow_timeouts == 0


@pytest.mark.integration
def test_recycling_ends_the_environments_and_their_connections(twin: LocalTwin) -> None:
    twin.invoke("items")
    assert twin.recycle() >= 1
    assert twin.function("items").environments() == []
    assert twin.connections().client == 0
    assert twin.stats().client_connections == 0
    # The next invocation cold-starts.
    assert twin.invoke("items").cold_start


@pytest.mark.integration
def test_pins_since_a_checkpoint_name_rds_proxy_s_reason_and_the_digest(twin: LocalTwin) -> None:
    before = twin.checkpoint()
    with psycopg.connect(**twin.proxy_params().kwargs()) as conn:
        conn.execute("SET search_path TO public")
        (pin,) = twin.pins(since=before)
        assert twin.stats().pinned_sessions == 1
    assert pin.digest == "set search_path to $1"
    assert pin.reason.startswith("SQL changed session settings that the proxy doesn't track.")
    assert twin.pins(since=twin.checkpoint()) == []


@pytest.mark.integration
def test_logs_since_a_checkpoint_hold_what_the_functions_printed_and_the_proxy_logged(
    twin: LocalTwin,
) -> None:
    before = twin.checkpoint()
    twin.recycle()
    twin.invoke("items")
    logs = twin.logs(since=before)
    assert "greeting: hello" in logs.functions
    assert "START RequestId:" in logs.functions
    assert "A new client connected from" in logs.proxy
    assert logs.pins == ()
    assert twin.logs(since=logs.until).functions == ""


@pytest.mark.integration
def test_the_environment_is_what_another_shell_needs(twin: LocalTwin) -> None:
    env = twin.environment()
    assert env["LAMBDA_FUNCTION_NAME"] == "items"
    answer = twin.lambda_client().invoke(FunctionName=env["LAMBDA_FUNCTION_NAME"], Payload=b"{}")
    assert json.loads(answer["Payload"].read()) == {"items": 2}
    assert Path(env["DB_SSLROOTCERT"]).is_file()


UNGUARDED_SCRIPT = """
from emulator.twin import LocalTwin

with LocalTwin(handler="app.handler", code="function", function_log="functions.log") as twin:
    print("function error:", twin.invoke("local-twin-fn").function_error)
"""


@pytest.mark.integration
def test_a_script_that_starts_a_twin_without_a_main_guard_is_told_why_its_function_fails(
    tmp_path: Path,
) -> None:
    # Each execution environment imports the script, as multiprocessing's spawn does: without
    # `if __name__ == "__main__":` it would start a twin of its own.
    (tmp_path / "function").mkdir()
    (tmp_path / "function" / "app.py").write_text("def handler(event, context):\n    return 1\n")
    (tmp_path / "script.py").write_text(UNGUARDED_SCRIPT)
    run = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "function error: Unhandled" in run.stdout
    # The environment's import of the script fails before it runs anything, and says why.
    assert "LocalTwin: a Lambda execution environment is importing your script" in run.stderr
    assert 'how to fix: start the twin under `if __name__ == "__main__":`' in run.stderr


def test_after_a_failover_and_its_rejoin_writes_through_the_proxy_reach_the_new_writer() -> None:
    # No client has used the proxy: only its own monitoring can tell it the writer moved.
    with LocalTwin(cluster="aurora", replicas=1) as twin:
        report = twin.failover()
        twin.wait_rejoined()

        with psycopg.connect(**twin.proxy_params().kwargs(), autocommit=True) as conn:
            conn.execute("CREATE TABLE after_failover (i int)")
            writer = conn.execute("SELECT inet_server_port()").fetchone()
        assert writer == (twin.stack.cluster.instance(report.new_writer).server.port,)  # type: ignore[union-attr]
