"""`python -m emulator up --env-file FILE`: another shell reaches the stack; Ctrl+C removes it."""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from emulator.paths import REPO
from emulator.stack import leftovers
from emulator.stack.envfile import parse_env, write_env_file
from emulator.stack.pgbouncer import find_pgbouncer
from emulator.wait import wait_until

pytestmark = pytest.mark.integration

REQUIRED_KEYS = {
    "PGHOST",
    "PGPORT",
    "DB_PROXY_ENDPOINT",
    "DB_PORT",
    "DB_NAME",
    "DB_USER",
    "DB_SECRET_ARN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
HANDLER_FROM_ANOTHER_SHELL = (
    "import importlib.util, json, sys\n"
    "spec = importlib.util.spec_from_file_location('index', sys.argv[1])\n"
    "index = importlib.util.module_from_spec(spec); spec.loader.exec_module(index)\n"
    "print(json.dumps(index.handler({}, None)))\n"
)


INVOKE_FROM_ANOTHER_SHELL = (
    "import boto3, json, os\n"
    "answer = boto3.client('lambda').invoke(FunctionName=os.environ['LAMBDA_FUNCTION_NAME'], Payload=b'{}')\n"
    "print(json.dumps({'status': answer['StatusCode'], 'payload': json.loads(answer['Payload'].read())}))\n"
)


class RunningUp:
    def __init__(self, process: subprocess.Popen[bytes], env_file: Path, log: Path) -> None:
        self.process = process
        self.env_file = env_file
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def died(self) -> str | None:
        return None if self.process.poll() is None else f"exit {self.process.returncode}: {self.output()}"

    def env(self) -> dict[str, str]:
        return parse_env(self.env_file.read_text())

    def workdir(self) -> Path:
        return Path(self.env()["DB_SSLROOTCERT"]).parent

    def shell_env(self) -> dict[str, str]:
        """What `set -a; . FILE` gives a fresh shell."""
        return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **self.env()}


@contextlib.contextmanager
def _hang_up_by_default() -> Iterator[None]:
    """Children started within get SIGHUP at its default, as a terminal's shell starts a job,
    whatever this run inherited: a CI job started under nohup ignores SIGHUP, and an ignored signal
    stays ignored across exec. (No SIGHUP is sent to this process's group meanwhile.)"""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def _start_up(tmp_path: Path, proxy: str, *options: str, wrapper: Sequence[str] = ()) -> RunningUp:
    """`up` in a terminal of its own, its output in a file; wrapper: a command in front (nohup)."""
    env_file = tmp_path / "stack.env"
    log = tmp_path / "up.log"
    with log.open("wb") as sink, _hang_up_by_default():
        process = subprocess.Popen(
            [
                *wrapper,
                *(sys.executable, "-m", "emulator", "up", "--proxy", proxy, "--env-file", str(env_file)),
                *options,
            ],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            # Its own session and process group, as in a terminal of its own.
            start_new_session=True,
        )
    running = RunningUp(process, env_file, log)
    wait_until(env_file.exists, component="python -m emulator up", timeout=120, alive=running.died)
    return running


@pytest.fixture(params=["emulator", pytest.param("pgbouncer", marks=pytest.mark.pgbouncer)])
def up(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningUp]:
    if request.param == "pgbouncer" and find_pgbouncer() is None:
        pytest.skip("no pgbouncer binary (apt-get install pgbouncer); .ci/run installs it")
    running = _start_up(tmp_path, request.param)
    yield running
    _stop(running)


def _stop(running: RunningUp) -> None:
    """Stop `up` as a user does (Ctrl+C): SIGKILL would orphan its servers."""
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGINT)
        try:
            running.process.wait(60)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait(10)


def _stop_and_check_nothing_is_left(
    running: RunningUp, signum: signal.Signals | None, workdir: Path | None = None
) -> str:
    """Stop `up` with signum (None: the caller signalled it, and found its workdir first) and check
    what it leaves."""
    workdir = workdir or running.workdir()
    if signum is not None:
        running.process.send_signal(signum)
    running.process.wait(timeout=60)
    output = running.output()
    assert running.process.returncode == 0, output
    assert not running.env_file.exists(), "the env file describes a stack that is gone"
    assert not workdir.exists()
    leftovers = [
        entry.name
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and str(workdir).encode() in _cmdline(entry)
    ]
    assert leftovers == []
    return output


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""


def test_the_env_file_has_every_key_another_shell_needs(up: RunningUp) -> None:
    assert set(up.env()) >= REQUIRED_KEYS
    assert up.env()["LOCAL_TWIN_PROXY"] in ("emulator", "pgbouncer")
    assert up.env()["DB_AUTH"] == "iam"


@pytest.mark.skipif(shutil.which("psql") is None, reason="no psql client (apt-get install postgresql-client)")
def test_psql_reaches_postgresql_from_another_shell(up: RunningUp) -> None:
    done = subprocess.run(
        [
            "psql",
            "-XAtc",
            "SELECT current_user, current_setting('max_connections'), ssl FROM pg_stat_ssl "
            "WHERE pid = pg_backend_pid()",
        ],
        env=up.shell_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == "app_user|20|t"


def test_the_handler_reaches_the_proxy_from_another_shell(up: RunningUp) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HANDLER_FROM_ANOTHER_SHELL, str(REPO / "lambda" / "index.py")],
        env=up.shell_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    response = json.loads(done.stdout.strip().splitlines()[-1])
    assert response["ok"], response
    assert response["result"]["user"] == "app_user"


def test_boto3_invokes_the_handler_from_another_shell(up: RunningUp) -> None:
    """The env file's AWS_ENDPOINT_URL_LAMBDA sends boto3's Lambda client to the kit: the same
    client code as against AWS runs the handler in an execution environment of the stack's."""
    env = up.env()
    assert {"AWS_ENDPOINT_URL_LAMBDA", "LAMBDA_FUNCTION_NAME"} <= set(env)
    result = subprocess.run(
        [sys.executable, "-c", INVOKE_FROM_ANOTHER_SHELL],
        env=up.shell_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer = json.loads(result.stdout)
    assert answer["status"] == 200
    assert answer["payload"]["ok"] is True, answer
    assert answer["payload"]["result"]["user"] == env["DB_USER"]


def test_the_default_proxy_is_the_rds_proxy_emulator_with_iam_and_tls(tmp_path: Path) -> None:
    running = _start_up(tmp_path, "emulator")
    try:
        env = running.env()
        assert env["LOCAL_TWIN_PROXY"] == "emulator"
        # A plain connection is refused in RDS Proxy's words; a token over TLS gets in.
        done = subprocess.run(
            ["psql", "-XAtc", "SELECT 1"],
            env={
                **running.shell_env(),
                "PGHOST": env["DB_PROXY_ENDPOINT"],
                "PGPORT": env["DB_PORT"],
                "PGSSLMODE": "disable",
            },
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "This RDS Proxy requires TLS connections." in done.stderr
    finally:
        _stop_and_check_nothing_is_left(running, signal.SIGINT)


def _session_processes(session: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # /proc/PID/stat: "pid (comm) state ppid pgrp session ..."
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session:
                found.add(int(entry.name))
    return found


def test_ctrl_c_stops_every_process_and_removes_every_file(up: RunningUp) -> None:
    """Ctrl+C in a terminal reaches the whole process group: the stack's servers, the Lambda
    environments (one frozen after an invocation) and their zygote all end, without a traceback."""
    subprocess.run(
        [sys.executable, "-c", INVOKE_FROM_ANOTHER_SHELL], env=up.shell_env(), timeout=60, check=True
    )
    assert len(_session_processes(up.process.pid)) > 1
    workdir = up.workdir()
    os.killpg(up.process.pid, signal.SIGINT)
    output = _stop_and_check_nothing_is_left(up, None, workdir)
    assert "Ready." in output
    assert "Traceback" not in output
    wait_until(
        lambda: not _session_processes(up.process.pid), component="the session's processes", timeout=30
    )


def test_sigterm_stops_every_process_and_removes_every_file(tmp_path: Path) -> None:
    running = _start_up(tmp_path, "direct")
    try:
        _stop_and_check_nothing_is_left(running, signal.SIGTERM)
    finally:
        _stop(running)


def _invoke_from_another_shell(running: RunningUp) -> None:
    subprocess.run(
        [sys.executable, "-c", INVOKE_FROM_ANOTHER_SHELL], env=running.shell_env(), timeout=60, check=True
    )


def _all_gone(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of processes still running once they had 30 s to end."""
    _, alive = psutil.wait_procs(processes, timeout=30)
    return [process for process in alive if process.status() != psutil.STATUS_ZOMBIE]


def test_sighup_stops_every_process_and_removes_every_file(tmp_path: Path) -> None:
    """A closed terminal or a dropped SSH session: the shell sends SIGHUP to the job's process
    group (`up`, its Lambda environments and their zygote). `up` stops as on SIGTERM: its env file
    (credentials) and its directory go, and no process of its own is left."""
    running = _start_up(tmp_path, "direct")
    try:
        _invoke_from_another_shell(running)
        processes = psutil.Process(running.process.pid).children(recursive=True)
        assert len(processes) > 1
        workdir = running.workdir()
        os.killpg(running.process.pid, signal.SIGHUP)
        output = _stop_and_check_nothing_is_left(running, None, workdir)
        assert "Stopped." in output
        assert "Traceback" not in output
        assert _all_gone(processes) == []
    finally:
        _stop(running)


def test_closing_the_terminal_that_runs_up_stops_it_and_removes_every_file(tmp_path: Path) -> None:
    """`up` in a terminal of its own (a pseudo-terminal: a terminal window, an `ssh -t`). Closing it
    hangs it up: the kernel sends SIGHUP, and from then on a write to the terminal fails (EIO). The
    lines `up` prints while it stops must not cut the stop short."""
    env_file, transcript = tmp_path / "stack.env", tmp_path / "terminal.log"
    terminal, slave = pty.openpty()
    try:
        # util-linux's setsid: a session of its own, the terminal as its controlling terminal; it
        # execs `up` (this process's child leads no process group: no fork), so the pid is up's.
        up = [sys.executable, "-m", "emulator", "up", "--proxy", "direct", "--env-file", str(env_file)]
        with _hang_up_by_default():
            process = subprocess.Popen(
                ["setsid", "--ctty", *up], cwd=REPO, stdin=slave, stdout=slave, stderr=slave
            )
    finally:
        os.close(slave)
    running = RunningUp(process, env_file, transcript)
    try:

        def ready() -> bool:
            # Read what `up` printed as a terminal would: a full terminal would block it.
            with transcript.open("ab") as out:
                while select.select([terminal], [], [], 0)[0]:
                    out.write(os.read(terminal, 65536))
            return env_file.exists()

        wait_until(ready, component="up in a terminal", timeout=120, alive=running.died)
        processes = psutil.Process(process.pid).children(recursive=True)
        workdir = running.workdir()
        os.close(terminal)
        terminal = -1
        _stop_and_check_nothing_is_left(running, None, workdir)
        assert _all_gone(processes) == []
    finally:
        if terminal != -1:
            os.close(terminal)
        _stop(running)


def test_up_under_nohup_outlives_a_sighup_and_stops_on_sigterm(tmp_path: Path) -> None:
    """nohup starts `up` with SIGHUP ignored, to outlive its terminal: the kit leaves it ignored."""
    running = _start_up(tmp_path, "direct", wrapper=["nohup"])
    try:
        pid = running.process.pid  # nohup execs the command: the same process
        ignored = Path(f"/proc/{pid}/status").read_text().split("SigIgn:")[1].split()[0]
        assert int(ignored, 16) & (1 << (signal.SIGHUP - 1)), "the kit no longer ignores SIGHUP"
        # An ignored signal is discarded when sent: the stack, and its Lambda environments, serve on.
        os.killpg(pid, signal.SIGHUP)
        _invoke_from_another_shell(running)
        assert running.process.poll() is None
        assert running.env_file.exists()
        _stop_and_check_nothing_is_left(running, signal.SIGTERM)
    finally:
        _stop(running)


def test_a_second_up_on_a_running_stack_s_env_file_is_refused_and_the_file_is_kept(
    tmp_path: Path,
) -> None:
    """Two `up`s given one --env-file: the second would take the first's file (and the first's exit
    would then remove the second's). It is refused before it starts anything; the file stays the
    first's."""
    first = _start_up(tmp_path, "direct")
    try:
        written = first.env_file.read_text()
        second = subprocess.run(
            [sys.executable, "-m", "emulator", "up", "--proxy", "direct", "--env-file", str(first.env_file)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"belongs to an `up` that is still running (pid {first.process.pid})" in second.stderr
        assert "Starting" not in second.stdout
        assert first.env_file.read_text() == written
    finally:
        _stop(first)
    assert not first.env_file.exists()


def test_up_removes_its_env_file_only_while_the_file_is_still_its_own(tmp_path: Path) -> None:
    """The file another stack wrote over this one's is left at exit; a stale file is replaced; a
    file `rotate-secret` rewrote (a new PGPASSWORD) is still this stack's, and removed."""
    running = _start_up(tmp_path, "direct")
    try:
        env = running.env()
        # What a second stack's `up` (started after this one's file went stale) would write.
        write_env_file(running.env_file, {**env, "LOCAL_TWIN_CONTROL_URL": "http://127.0.0.1:9/other"})
    finally:
        _stop(running)
    assert running.process.returncode == 0, running.output()
    assert running.env_file.exists(), "up removed a file another stack wrote"

    # That file names a stack nobody runs (as after a kill -9): the next `up` replaces it.
    stale = running.env()["LOCAL_TWIN_CONTROL_URL"]
    running = _start_up(tmp_path, "direct")
    try:
        wait_until(
            lambda: running.env()["LOCAL_TWIN_CONTROL_URL"] != stale,
            component="up over a stale env file",
            timeout=120,
            alive=running.died,
        )
        write_env_file(running.env_file, {**running.env(), "PGPASSWORD": "rotated"})
    finally:
        _stop(running)
    assert not running.env_file.exists(), "up left its own (rotated) env file"


def _processes_of(workdir: Path) -> list[psutil.Process]:
    """The running processes whose command line names the stack's directory (its servers)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if process.info["status"] != psutil.STATUS_ZOMBIE and str(workdir) in " ".join(
                process.info["cmdline"] or ()
            ):
                found.append(process)
    return found


@pytest.mark.parametrize("options", [(), ("--cluster", "aurora")], ids=["single", "aurora"])
def test_a_sigkill_of_up_leaves_no_server_and_the_next_stack_removes_its_directory(
    tmp_path: Path, options: tuple[str, ...]
) -> None:
    """SIGKILL gives `up` no say: its servers (PostgreSQL, replicas, the proxy) stop by themselves
    (their parent-death signal), and the directory they used is removed by the next stack's sweep."""
    running = _start_up(tmp_path, "emulator", *options)
    try:
        workdir = running.workdir()
        servers = _processes_of(workdir)
        names = " ".join(" ".join(process.cmdline()) for process in servers)
        assert "postgres -D" in names
        assert "emulator.rdsproxy" in names
    finally:
        running.process.kill()
        running.process.wait(10)
    wait_until(lambda: not _processes_of(workdir), component="the killed up's servers", timeout=30)
    assert workdir.exists()  # nobody was left to remove it
    assert workdir in leftovers.sweep(workdir.parent)
    assert not workdir.exists()


def test_help_documents_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "emulator", "--help"], capture_output=True, text=True, check=True, cwd=REPO
    )
    for command in ("up", "demo", "failover", "failover-demo", "rotate-secret"):
        assert command in done.stdout
    up_help = subprocess.run(
        [sys.executable, "-m", "emulator", "up", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    for option in ("--proxy", "--env-file", "--max-connections", "--pool-size"):
        assert option in up_help


def test_a_part_that_fails_to_start_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    # PostgreSQL refuses max_connections=0: the error must name it and point at its log.
    done = subprocess.run(
        [sys.executable, "-m", "emulator", "up", "--proxy", "direct", "--max-connections", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: PostgreSQL: exited before it was ready"), done.stderr
    assert "how to fix: its log is" in done.stderr
    workdir = Path(done.stderr.split("how to fix: its log is ")[1].split()[0]).parent
    assert not workdir.exists()


def test_sigint_stops_up_started_in_the_background_of_a_script(tmp_path: Path) -> None:
    """A script's background job starts with SIGINT ignored (bash does that without job control):
    `kill -INT` must still stop the stack."""
    env_file, pid_file, log = tmp_path / "stack.env", tmp_path / "up.pid", tmp_path / "up.log"
    script = (
        f"{sys.executable} -m emulator up --proxy direct --env-file {env_file} >{log} 2>&1 &\n"
        f"echo $! > {pid_file}\nwait\n"
    )
    shell = subprocess.Popen(["bash", "-c", script], cwd=REPO, start_new_session=True)
    try:
        wait_until(env_file.exists, component="up in the background", timeout=120, alive=lambda: None)
        pid = int(pid_file.read_text())
        ignored = Path(f"/proc/{pid}/status").read_text().split("SigIgn:")[1].split()[0]
        assert int(ignored, 16) & (1 << (signal.SIGINT - 1)) == 0, "the kit left SIGINT ignored"
        os.kill(pid, signal.SIGINT)
        assert shell.wait(timeout=60) == 0
        assert "Stopped." in log.read_text()
        assert not env_file.exists()
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGTERM)
            shell.wait(30)


def _failover(*options: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emulator", "failover", *options],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
        check=False,
    )


def test_failover_from_another_shell_promotes_a_replica_of_a_running_up(tmp_path: Path) -> None:
    running = _start_up(tmp_path, "direct", "--cluster", "aurora", "--replicas", "2", "--dns-ttl", "0")
    try:
        env = running.env()
        assert env["LOCAL_TWIN_DATABASE_KIND"] == "aurora"
        assert "Database     aurora: database-1-instance-1 writer" in running.output()
        # The console script the README tells users to run.
        assert f"Failover     rds-proxy-twin failover --env-file {running.env_file}" in running.output()

        done = _failover(
            "--env-file", str(running.env_file), "--to", "database-1-instance-3", "--format", "json"
        )

        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["old_writer"], report["new_writer"]) == (
            "database-1-instance-1",
            "database-1-instance-3",
        )
        assert report["total_seconds"] > 0
        assert json.loads(Path(env["LOCAL_TWIN_TOPOLOGY"]).read_text())["writer"] == "database-1-instance-3"
        # A shell that sourced the env file needs no option; a replica that is not there is refused.
        refused = _failover("--to", "nope", env={**running.shell_env(), "PYTHONPATH": str(REPO)})
        assert refused.returncode == 1
        assert "no instance 'nope'" in refused.stderr
        # Text for people: the old writer (now rejoining, so the next failover waits for it) is named.
        again = _failover("--env-file", str(running.env_file))
        assert again.returncode == 0, again.stderr
        assert "Failed over: database-1-instance-3 -> " in again.stdout
        assert "total" in again.stdout
        _stop_and_check_nothing_is_left(running, signal.SIGINT)
    finally:
        _stop(running)


def test_failover_without_a_running_twin_says_how_to_start_one(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "LOCAL_TWIN_CONTROL_URL"}
    done = _failover(env=env)
    assert done.returncode == 2
    assert "LOCAL_TWIN_CONTROL_URL is missing" in done.stderr
    assert "start one with: rds-proxy-twin up --cluster aurora" in done.stderr
    stale = tmp_path / "stack.env"
    stale.write_text("LOCAL_TWIN_CONTROL_URL=http://127.0.0.1:9/gone\n")
    done = _failover("--env-file", str(stale))
    assert done.returncode == 1
    assert "no running twin answers" in done.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--cluster", "single"), "a failover needs a cluster"),
        (("--workers", "0"), "--workers must be at least 1"),
        (("--replicas", "2", "--cluster", "multi-az"), "replicas"),
    ],
    ids=["single-instance", "no-workers", "replicas-of-multi-az"],
)
def test_the_failover_demo_refuses_what_cannot_fail_over_before_starting_anything(
    arguments: tuple[str, ...], message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "emulator", "failover-demo", *arguments],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


@pytest.mark.parametrize(
    ("option", "typo", "choices"),
    [
        ("--proxy", "pgbouncr", "'emulator', 'pgbouncer', 'direct'"),
        ("--cluster", "auror", "'single', 'aurora', 'multi-az'"),
    ],
)
def test_a_mistyped_choice_is_refused_with_the_choices_before_anything_starts(
    option: str, typo: str, choices: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from emulator.cli import main  # noqa: PLC0415

    with pytest.raises(SystemExit) as exited:
        main(["up", option, typo])
    assert exited.value.code == 2
    assert f"argument {option}: invalid choice: '{typo}' (choose from {choices})" in capsys.readouterr().err


def test_up_prints_the_database_s_endpoints_and_puts_each_instance_endpoint_in_the_env_file(
    tmp_path: Path,
) -> None:
    running = _start_up(
        tmp_path,
        "emulator",
        "--cluster",
        "aurora",
        "--iam-database-auth",
        "--proxy-setting",
        "proxy_endpoints=reads=READ_ONLY:0",
    )
    try:
        env = running.env()
        banner = running.output()
        topology = json.loads(Path(env["LOCAL_TWIN_TOPOLOGY"]).read_text())
        assert f"  writer     {env['PGHOST']}:{env['PGPORT']}  (PGHOST, PGPORT" in banner
        assert f"  reader     {env['DB_READER_HOST']}:{env['DB_READER_PORT']}  (DB_READER_HOST" in banner
        for instance in topology["instances"]:
            key = "DB_INSTANCE_" + instance["name"].upper().replace("-", "_")
            host, port = env[f"{key}_HOST"], env[f"{key}_PORT"]
            assert f"  instance   {instance['name']} {host}:{port}  ({key}_HOST/_PORT)" in banner
            # The servers' own ports are the kit's business, not the banner's.
            assert f":{instance['port']}" not in banner
        reads = f"{env['PROXY_ENDPOINT_READS_HOST']}:{env['PROXY_ENDPOINT_READS_PORT']}"
        assert f"  endpoint   reads READ_ONLY {reads}  (PROXY_ENDPOINT_READS_HOST" in banner
        assert "IAM          IAM database authentication on" in banner
        assert env["PGPASSWORD"]  # the application's user is not in rds_iam: it keeps its password
    finally:
        _stop(running)


def test_up_with_iam_database_auth_names_the_single_instance_and_its_endpoint(tmp_path: Path) -> None:
    running = _start_up(tmp_path, "emulator", "--iam-database-auth")
    try:
        env = running.env()
        banner = running.output()
        postgres = next(line for line in banner.splitlines() if line.startswith("PostgreSQL"))
        # Its details, with no empty place for an address: clients use the endpoint below.
        assert "127.0.0.1" not in postgres
        assert "(" not in postgres
        assert "max_connections=" in postgres
        assert re.search(r"^Database     single: \S+ writer$", banner, re.MULTILINE)
        assert f"  writer     {env['PGHOST']}:{env['PGPORT']}  (PGHOST, PGPORT)" in banner
    finally:
        _stop(running)


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    from emulator.cli import main  # noqa: PLC0415

    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_says_where_the_proxy_settings_are_listed_and_only_what_each_command_has(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at hyphens ("--print- config") otherwise
    up = _help("up", capsys)
    assert "`python -m emulator proxy --print-config` lists every name with the standalone proxy's" in up
    # The defaults --print-config does not show are named, as the stack sets them.
    assert "here the defaults differ in require_tls=true, iam_auth=REQUIRED, max_connections_percent" in up
    assert "With --terraform, an applied aws_rds_cluster" in up
    demo = _help("failover-demo", capsys)
    assert "--terraform" not in demo
    assert "exhaustion" not in demo
    assert "(default: multi-az)" in demo
    # It refuses a single instance and fails its cluster over itself.
    assert "One PostgreSQL (single)" not in demo
    assert "emulator failover` fails it over" not in demo
    invoke = _help("invoke", capsys)
    assert "as `up` does, with the same options" in invoke
    assert "emulator failover` fails it over" not in invoke  # its twin is gone before any failover
    exhaustion = _help("demo", capsys)
    assert "through the RDS Proxy emulator and through PgBouncer" in exhaustion


def test_invoke_has_every_option_of_up_but_the_env_file() -> None:
    """invoke starts the twin "as `up` does": with the same options."""
    from emulator.cli import _parser  # noqa: PLC0415

    def options(command: str) -> set[str]:
        (commands,) = [a for a in _parser(command)._actions if isinstance(a, argparse._SubParsersAction)]
        return {flag for action in commands.choices[command]._actions for flag in action.option_strings}

    assert options("up") - options("invoke") == {"--env-file"}
    top = subprocess.run(
        [sys.executable, "-m", "emulator", "--help"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert "the pooler" not in top
    # --print-config does list the settings up's --proxy-setting takes.
    printed = subprocess.run(
        [sys.executable, "-m", "emulator", "proxy", "--print-config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    listed = json.loads(printed.stdout)
    assert {"proxy_endpoints", "default_auth_scheme", "connection_borrow_timeout"} <= set(listed)


def test_a_start_that_applies_terraform_says_it_takes_a_while() -> None:
    from types import SimpleNamespace  # noqa: PLC0415

    from emulator import cli  # noqa: PLC0415

    twin: Any = SimpleNamespace(config=SimpleNamespace(proxy="emulator"))
    plain = cli._starting(twin, argparse.Namespace())
    applying = cli._starting(twin, argparse.Namespace(terraform=Path("infra")))

    assert plain == "Starting the local stack (proxy: emulator) ..."
    assert applying == (
        "Starting the local stack (proxy: emulator) and applying infra with Terraform: "
        "this takes a minute or two ..."
    )


@pytest.mark.parametrize("command", ["demo", "failover-demo"])
def test_a_demos_work_ms_and_payload_together_are_refused_before_anything_starts(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --payload replaces the event that --work-ms would make: one of them would be ignored.
    from emulator.cli import main  # noqa: PLC0415

    with pytest.raises(SystemExit) as exited:
        main([command, "--work-ms", "10", "--payload", '{"sleep_ms": 20}'])
    assert exited.value.code == 2
    assert "--work-ms makes the example's event" in capsys.readouterr().err


def _compiled_modules() -> set[str]:
    """The modules setup.py compiles with mypyc (its COMPILED list), by module name."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMPILED" for t in node.targets):
            paths = ast.literal_eval(node.value)
            return {path.removesuffix(".py").replace("/", ".") for path in paths}
    raise AssertionError("setup.py has no COMPILED list")


def test_the_cli_and_the_twin_load_none_of_the_proxys_compiled_modules() -> None:
    # `up` stays up beside the stack: a compiled build's modules (one shared library of a few MB)
    # loaded there would only add to the idle stack's memory (issue 16's footprint).
    compiled = _compiled_modules()
    code = "import sys, emulator.cli, emulator.twin, emulator.pytest_plugin; print(*sorted(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, timeout=60
    )

    assert compiled, "no module listed"
    assert not compiled & set(done.stdout.split())


@pytest.mark.parametrize("handler_only", [True, False])
def test_package_warns_when_the_code_imports_a_driver_the_package_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], handler_only: bool
) -> None:
    # The twin gives every handler psycopg2 and psycopg, Lambda's runtime does not: such a zip runs
    # on the twin and fails its import on AWS, so `package` says so.
    from emulator.cli import main  # noqa: PLC0415

    code = tmp_path / "function"
    code.mkdir()
    (code / "app.py").write_text("import psycopg2\n\ndef handler(event, context):\n    return 1\n")
    out = tmp_path / "app.zip"
    argv = ["package", "--code", str(code), "--out", str(out)] + (["--handler-only"] if handler_only else [])
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert str(out) in captured.out
    assert "warning: the code imports psycopg2, which the package does not hold" in captured.err
    reason = "--handler-only leaves it out" if handler_only else "no requirements.txt names it"
    assert reason in captured.err
    assert "Runtime.ImportModuleError" in captured.err


def test_package_says_nothing_of_drivers_the_code_does_not_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from emulator.cli import main  # noqa: PLC0415

    code = tmp_path / "function"
    code.mkdir()
    (code / "app.py").write_text("import json\n\ndef handler(event, context):\n    return 1\n")
    assert main(["package", "--code", str(code), "--out", str(tmp_path / "app.zip"), "--handler-only"]) == 0
    assert capsys.readouterr().err == ""
