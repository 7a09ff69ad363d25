"""The pytest plugin in a project's own test suite, run as the project runs it: pytest in the
project's directory, with the twin configured in its pyproject.toml and on the command line.

One suite run on one twin is the specification of what a test on the twin sees: which tests fail
(a pin nobody declared, a database over the proxy's cap) with which words, whose logs each failure
shows, and that nothing is left running afterwards. That run is shared by the tests of the first
half (a twin takes seconds to start); each case after it is a pytest run of its own, with pytester.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from emulator.errors import ReadinessTimeout
from emulator.wait import wait_until

pytestmark = pytest.mark.integration

# The project's function: it connects once per execution environment through the proxy with an IAM
# token (or, asked to, straight to PostgreSQL: the bug twin_within_cap is for), runs the event's
# statements, and prints the event's note, which tells the tests' logs apart.
FUNCTION = """
import os

import boto3
import psycopg

_connection = None


def _connect(bypass_proxy):
    if bypass_proxy:
        return psycopg.connect(host=os.environ["DIRECT_HOST"], port=int(os.environ["DIRECT_PORT"]),
                               dbname=os.environ["DB_NAME"], user=os.environ["DB_USER"],
                               password=os.environ["DIRECT_PASSWORD"], sslmode="prefer", autocommit=True)
    host, port, user = os.environ["DB_HOST"], int(os.environ["DB_PORT"]), os.environ["DB_USER"]
    token = boto3.client("rds").generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user)
    return psycopg.connect(host=host, port=port, dbname=os.environ["DB_NAME"], user=user, password=token,
                           sslmode="require", autocommit=True)


def handler(event, context):
    global _connection
    print("note:", event.get("note"))
    if _connection is None:
        _connection = _connect(event.get("bypass_proxy", False))
    for statement in event.get("statements", []):
        _connection.execute(statement)
    if event.get("hold_ms"):
        _connection.execute("SELECT pg_sleep(%s)", (event["hold_ms"] / 1000,))
    items = _connection.execute("SELECT count(*) FROM items").fetchone()[0]
    return {"greeting": os.environ["GREETING"], "items": items}
"""

SCHEMA = "CREATE TABLE items (name text);\nINSERT INTO items VALUES ('tea'), ('scone');\n"

PYPROJECT = """
[tool.pytest.ini_options]
twin_handler = "items.handler"
twin_code = "function"
twin_function_name = "items"
twin_init_sql = "schema.sql"
twin_env = [
    "DB_HOST=${DB_PROXY_ENDPOINT}",
    "GREETING=from the ini file",
    "DIRECT_HOST=${PGHOST}",
    "DIRECT_PORT=${PGPORT}",
    "DIRECT_PASSWORD=${PGPASSWORD}",
]
"""

# What the command line adds to the ini file's configuration.
COMMAND_LINE = (
    "--twin-env",
    "GREETING=from the command line",
    "--twin-proxy-setting",
    "max_connections_percent=35",
)

CONFTEST = """
from emulator.pytest_plugin import twin_fixture

# A second twin, configured differently: a smaller share of max_connections for the proxy.
small_twin = twin_fixture(proxy_settings={"max_connections_percent": 10})
"""

SUITE = """
import pytest

SET_TIMEOUT = "SET statement_timeout = '5s'"


def test_the_function_answers(twin):
    answer = twin.invoke("items", {"note": "answering test"}).json()
    assert answer == {"greeting": "from the command line", "items": 2}


def test_the_proxy_follows_the_command_line(twin):
    assert twin.stats().max_database_connections_allowed == 7  # 35% of max_connections 20


def test_a_session_setting_pins(twin):
    assert twin.invoke("items", {"note": "pinning test", "statements": [SET_TIMEOUT]}).succeeded


@pytest.mark.twin_allow_pin("set statement_timeout")
def test_a_declared_pin(twin):
    assert twin.invoke("items", {"note": "declared pin", "statements": [SET_TIMEOUT]}).succeeded


def test_a_failing_test(twin):
    twin.invoke("items", {"note": "failing test"})
    assert False, "this test fails on purpose"


def test_a_burst_through_the_proxy(twin, twin_within_cap):
    assert twin.invoke_burst("items", 12, {"note": "burst", "hold_ms": 200}).succeeded == 12


def test_a_burst_that_bypasses_the_proxy(twin, twin_within_cap):
    assert twin.invoke_burst("items", 8, {"note": "bypass", "bypass_proxy": True}).succeeded == 8


def test_a_twin_of_its_own(small_twin, twin):
    assert small_twin.stats().max_database_connections_allowed == 2
    assert small_twin.environment()["DB_PORT"] != twin.environment()["DB_PORT"]
    assert small_twin.invoke("items", {"note": "small twin"}).json()["greeting"] == "from the command line"
"""

# Set in every process a pytest run under test starts, to find them afterwards.
RUN_MARK = "TWIN_PLUGIN_TEST_RUN"
# A run starts one or two twins (seconds each; more on a loaded machine).
RUN_SECONDS = 300


def write_project(directory: Path, *, suite: str = SUITE, pyproject: str = PYPROJECT) -> None:
    (directory / "function").mkdir(exist_ok=True)
    (directory / "function" / "items.py").write_text(FUNCTION)
    (directory / "schema.sql").write_text(SCHEMA)
    (directory / "pyproject.toml").write_text(pyproject)
    (directory / "conftest.py").write_text(CONFTEST)
    (directory / "test_items.py").write_text(suite)


def processes_of_run(mark: str) -> list[psutil.Process]:
    """The processes a marked pytest run started that are still running."""
    return [
        process
        for process in psutil.process_iter(["environ"])
        if (process.info.get("environ") or {}).get(RUN_MARK) == mark
    ]


@dataclass(frozen=True)
class SuiteRun:
    result: pytest.RunResult
    # Each test's outcome (PASSED, FAILED, ERROR) by its name, from pytest -v.
    outcomes: dict[str, str]
    # The mark of the processes it started.
    mark: str

    def failure_of(self, test: str) -> str:
        """The failure report of one test: from its header to the next one."""
        text = self.result.stdout.str()
        start = re.search(rf"^_+ {test} _+$", text, re.MULTILINE)
        assert start is not None, f"no failure reported for {test}:\n{text}"
        end = re.search(r"^(_+ \w+ _+|=+ .* =+)$", text[start.end() :], re.MULTILINE)
        return text[start.start() : start.end() + (end.start() if end else len(text))]


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    """The suite above, run as `pytest -v` in the project's directory with the options above."""
    project = tmp_path_factory.mktemp("project")
    write_project(project)
    mark = uuid.uuid4().hex
    pytest_command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"]
    finished = subprocess.run(
        [*pytest_command, "--basetemp", str(project / "tmp"), *COMMAND_LINE],
        cwd=project,
        env={**os.environ, RUN_MARK: mark},
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )
    output = finished.stdout.splitlines()
    outcomes = {
        found[1]: found[2] for line in output if (found := re.match(r"^test_items\.py::(\w+) ([A-Z]+)", line))
    }
    return SuiteRun(
        pytest.RunResult(finished.returncode, output, finished.stderr.splitlines(), 0), outcomes, mark
    )


def test_the_twin_is_configured_by_the_ini_file_and_the_command_line(suite_run: SuiteRun) -> None:
    # The function, its schema and environment are the ini file's; the greeting (the command line
    # wins over the ini file) and the proxy's share of max_connections are the command line's.
    assert suite_run.outcomes["test_the_function_answers"] == "PASSED"
    assert suite_run.outcomes["test_the_proxy_follows_the_command_line"] == "PASSED"


def test_a_test_that_pinned_fails_with_rds_proxy_s_reason_and_the_statement_digest(
    suite_run: SuiteRun,
) -> None:
    assert suite_run.outcomes["test_a_session_setting_pins"] == "FAILED"
    failure = suite_run.failure_of("test_a_session_setting_pins").splitlines()
    assert failure[1] == "RDS Proxy pinned 1 session during this test (twin):"
    assert re.fullmatch(
        r"  clientConnection=\d+ dbConnection=\d+: "
        r"SQL changed session settings that the proxy doesn't track\. "
        r"Consider moving session configuration to the proxy's initialization query\.",
        failure[2],
    )
    assert failure[3] == '    Digest: "set statement_timeout = $1"'
    assert (
        failure[5]
        == 'If the test means to pin, mark it: @pytest.mark.twin_allow_pin("set statement_timeout")'
    )


def test_a_pin_the_test_declares_passes(suite_run: SuiteRun) -> None:
    assert suite_run.outcomes["test_a_declared_pin"] == "PASSED"


def test_a_failure_shows_the_function_s_and_the_proxy_s_log_of_its_own_test_only(suite_run: SuiteRun) -> None:
    failure = suite_run.failure_of("test_a_failing_test")
    assert "AssertionError: this test fails on purpose" in failure
    lambda_log = failure[failure.index("Captured Lambda log call") :]
    assert re.search(r"START RequestId: \S+ Version: \$LATEST\nnote: failing test\n", lambda_log)
    assert "REPORT RequestId: " in lambda_log
    assert "Captured RDS Proxy log call" in failure
    assert "A new client connected from 127.0.0.1" in failure
    # Nothing of the tests before it: their notes, the pinning test's pin.
    assert re.findall(r"note: .*", failure) == ["note: failing test"]
    assert "pinned" not in failure


def test_a_burst_within_the_cap_passes_and_one_that_bypasses_the_proxy_fails(suite_run: SuiteRun) -> None:
    assert suite_run.outcomes["test_a_burst_through_the_proxy"] == "PASSED"
    assert suite_run.outcomes["test_a_burst_that_bypasses_the_proxy"] == "FAILED"
    failure = suite_run.failure_of("test_a_burst_that_bypasses_the_proxy")
    served = re.search(
        r"The database served up to (\d+) connection\(s\) of the application's role during this test; the "
        r"proxy opened up to [0-7], and its cap \(MaxDatabaseConnectionsAllowed\) is 7\. The connections "
        r"beyond the proxy's did not come through it",
        failure,
    )
    assert served is not None, failure
    assert int(served[1]) >= 8  # the burst's own connections, at least


def test_a_fixture_factory_starts_a_differently_configured_twin_beside_it(suite_run: SuiteRun) -> None:
    assert suite_run.outcomes["test_a_twin_of_its_own"] == "PASSED"


def test_a_run_with_failures_ends_with_nothing_left_running(suite_run: SuiteRun) -> None:
    assert len(suite_run.outcomes) == 8, suite_run.result.stdout.str()
    assert suite_run.result.ret == pytest.ExitCode.TESTS_FAILED
    # A process the run stopped may take a moment to be gone from the table on a busy machine;
    # one still there after the deadline was left running.
    with contextlib.suppress(ReadinessTimeout):
        wait_until(lambda: not processes_of_run(suite_run.mark), component="the run's processes", timeout=10)
    assert processes_of_run(suite_run.mark) == []


QUIET_SUITE = """
import sys

import psutil


def test_nothing_of_the_twin_is_loaded_or_running(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("emulator.pytest_plugin")
    assert not {"emulator.twin.local", "boto3", "moto", "psycopg"} & set(sys.modules)
    assert psutil.Process().children(recursive=True) == []
"""


def test_a_suite_that_uses_no_twin_starts_nothing_and_loads_nothing_of_the_kit(
    pytester: pytest.Pytester,
) -> None:
    # The project configures a twin (ini file, a factory in its conftest) but no test asks for one.
    write_project(pytester.path, suite=QUIET_SUITE)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


TWO_TESTS = """
def test_one(twin):
    pass


def test_two(twin):
    pass
"""


@pytest.mark.parametrize(
    ("option", "why"),
    [
        (("--twin-handler", "item.handler"), "*no module 'item'*"),
        # A typo in a choice is an OptionError like any other, not an enum's ValueError traceback.
        (("--twin-proxy", "pgbouncr"), "proxy is one of emulator, pgbouncer, direct, not 'pgbouncr'"),
    ],
    ids=["missing-module", "mistyped-proxy"],
)
def test_a_twin_that_cannot_start_fails_the_tests_that_use_it_and_says_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, option: tuple[str, str], why: str
) -> None:
    write_project(pytester.path, suite=TWO_TESTS)
    mark = uuid.uuid4().hex
    monkeypatch.setenv(RUN_MARK, mark)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *option)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*twin: the local twin did not start.", why])
    assert "Traceback" not in result.stdout.str()
    assert processes_of_run(mark) == []


def test_a_schema_that_fails_is_reported_once_without_a_chained_traceback(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(pytester.path, suite=TWO_TESTS)
    (pytester.path / "broken.sql").write_text("CREATE TABLE broken (id int;\n")
    monkeypatch.setenv(RUN_MARK, uuid.uuid4().hex)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--twin-init-sql", "broken.sql")
    result.assert_outcomes(errors=2)
    output = result.stdout.str()
    assert "During handling of the above exception" not in output
    # Once in each of the two tests' reports (the twin is the session's: one start), not twice. The
    # short summary repeats whole messages where CI is set (pytest does not shorten them there).
    reports = output.split("short test summary info")[0]
    assert reports.count("syntax error at or near") == 2, output


WAITING_SUITE = """
import os
import time
from pathlib import Path


def test_waits_for_a_signal(twin):
    # The twin's directory (keys, pgdata), which must be gone after the signal.
    Path(os.environ["TWIN_STARTED_FILE"]).write_text(str(Path(twin.environment()["DB_SSLROOTCERT"]).parent))
    # Not signal.pause(): a signal handled between the write and the pause would leave it waiting
    # for another one. Python runs a pending handler at the loop's next turn.
    while True:
        time.sleep(0.1)
"""


def _signals_by_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _described(processes: list[psutil.Process]) -> str:
    lines = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            lines.append(f"{process.pid} {process.status()} {' '.join(process.cmdline())[:160]}")
    return "\n".join(lines) or "(none)"


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"]
)
def test_ctrl_c_sigterm_or_sighup_during_a_test_stops_the_twin_and_leaves_nothing_behind(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, signum: signal.Signals
) -> None:
    write_project(pytester.path, suite=WAITING_SUITE)
    mark, started, output = uuid.uuid4().hex, pytester.path / "started", pytester.path / "pytest.out"
    monkeypatch.setenv(RUN_MARK, mark)
    monkeypatch.setenv("TWIN_STARTED_FILE", str(started))
    with output.open("wb") as sink:
        # In a session of its own, as in a terminal: Ctrl+C reaches its whole process group.
        run = pytester.popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "--basetemp",
                str(pytester.path / "tmp"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A terminal's Ctrl+C and hang-up: SIGINT and SIGHUP at their defaults, whatever this
            # run inherited (started by `nohup ... &`, a process ignores both, and so would pytest).
            preexec_fn=_signals_by_default,
        )
    try:
        wait_until(
            started.exists,
            component="a test on the twin",
            timeout=RUN_SECONDS,
            alive=lambda: None if run.poll() is None else output.read_text(),
        )
        if signum == signal.SIGTERM:
            run.send_signal(signal.SIGTERM)
        else:
            # Ctrl+C, and a closed terminal's SIGHUP (the shell passes it on), reach the whole group.
            os.killpg(run.pid, signum)
        try:
            run.wait(timeout=120)
        except subprocess.TimeoutExpired:
            left = processes_of_run(mark)
            described = _described(left)
            for process in left:  # nothing left running for the tests after this one
                with contextlib.suppress(psutil.Error):
                    process.kill()
            pytest.fail(
                f"pytest still ran 120 s after the signal; its output:\n{output.read_text()}\n"
                f"the processes it started:\n{described}"
            )
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = output.read_text()
    assert run.returncode == pytest.ExitCode.INTERRUPTED, text
    assert "KeyboardInterrupt" in text
    assert processes_of_run(mark) == []
    assert not Path(started.read_text()).exists(), "the twin's directory was left behind"
