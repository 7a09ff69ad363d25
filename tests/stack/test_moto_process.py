"""moto in a process of its own per stack: its state, its lifetime, what the stack asks of it."""

from __future__ import annotations

import errno
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest

from emulator.errors import ComponentError
from emulator.net import LOOPBACK
from emulator.stack.moto import INSTALL_HINT, AwsEmulator
from emulator.stack.moto_process import DEFAULT_REGION, MotoProcess

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_two_stacks_do_not_share_motos_state(aws: AwsEmulator) -> None:
    other = AwsEmulator()
    other.start()
    try:
        arn = aws.create_db_secret("local-twin/db-credentials", username="app_user", password="one")
        again = other.create_db_secret("local-twin/db-credentials", username="app_user", password="two")
        assert arn != again
        assert other.client("secretsmanager").get_secret_value(SecretId=again)["SecretString"] == json.dumps(
            {"username": "app_user", "password": "two"}
        )
        assert [s["Name"] for s in other.client("secretsmanager").list_secrets()["SecretList"]] == [
            "local-twin/db-credentials"
        ]
    finally:
        other.stop()


def test_the_db_secret_is_the_one_rds_proxy_reads(aws: AwsEmulator) -> None:
    arn = aws.create_db_secret("local-twin/db-credentials", username="app_user", password="pw-1")
    secrets = aws.client("secretsmanager")
    assert json.loads(secrets.get_secret_value(SecretId=arn)["SecretString"]) == {
        "username": "app_user",
        "password": "pw-1",
    }
    assert secrets.describe_secret(SecretId=arn)["Name"] == "local-twin/db-credentials"
    with pytest.raises(ComponentError, match="ResourceExistsException"):
        aws.create_db_secret("local-twin/db-credentials", username="app_user", password="pw-2")


def test_aws_managed_policies_are_there_when_iam_is_first_asked(aws: AwsEmulator) -> None:
    iam = aws.client("iam")
    policy = iam.get_policy(PolicyArn="arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole")
    assert policy["Policy"]["PolicyName"] == "AWSLambdaBasicExecutionRole"
    iam.create_role(RoleName="proxy", AssumeRolePolicyDocument="{}")
    iam.attach_role_policy(RoleName="proxy", PolicyArn="arn:aws:iam::aws:policy/AmazonRDSFullAccess")
    attached = iam.list_attached_role_policies(RoleName="proxy")["AttachedPolicies"]
    assert [p["PolicyName"] for p in attached] == ["AmazonRDSFullAccess"]


class _Stats(http.server.BaseHTTPRequestHandler):
    """An emulator's /stats endpoint, saying what the test sets."""

    answer: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        body = json.dumps(self.answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _proxy_with_target(aws: AwsEmulator) -> Any:
    rds, ec2 = aws.client("rds"), aws.client("ec2")
    rds.create_db_instance(
        DBInstanceIdentifier="db1",
        Engine="postgres",
        DBInstanceClass="db.t4g.micro",
        MasterUsername="admin_user",
        MasterUserPassword="a-password-1",
    )
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{n}.0/24")["Subnet"]["SubnetId"] for n in (1, 2)]
    secret = aws.create_db_secret("s", username="u", password="p")
    rds.create_db_proxy(
        DBProxyName="proxy1",
        EngineFamily="POSTGRESQL",
        Auth=[{"AuthScheme": "SECRETS", "SecretArn": secret, "IAMAuth": "DISABLED"}],
        RoleArn="arn:aws:iam::123456789012:role/proxy",
        VpcSubnetIds=subnets,
    )
    rds.register_db_proxy_targets(DBProxyName="proxy1", DBInstanceIdentifiers=["db1"])
    return rds


def test_target_health_is_what_the_emulators_stats_endpoint_says(aws: AwsEmulator) -> None:
    rds = _proxy_with_target(aws)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stats)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        aws.follow_target_health("db1", f"http://127.0.0.1:{server.server_port}/stats")

        def health() -> dict[str, str]:
            (target,) = rds.describe_db_proxy_targets(DBProxyName="proxy1")["Targets"]
            found: dict[str, str] = target["TargetHealth"]
            return found

        _Stats.answer = {"target_available": False, "target_unavailable_reason": "cannot connect"}
        assert health() == {"State": "UNAVAILABLE", "Reason": "UNREACHABLE", "Description": "cannot connect"}
        _Stats.answer = {"target_available": True, "target_unavailable_reason": ""}
        assert health() == {"State": "AVAILABLE"}
        server.shutdown()
        server.server_close()
        assert health()["State"] == "UNAVAILABLE"  # an emulator that does not answer
        aws.forget_target_health("db1")
        assert health()["State"] in ("REGISTERING", "AVAILABLE")  # moto's own answer again
    finally:
        server.server_close()


def test_a_missing_moto_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A moto package that cannot be imported, first on the child's path.
    (tmp_path / "moto").mkdir()
    (tmp_path / "moto" / "__init__.py").write_text("raise ImportError(\"No module named 'moto'\")\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
    with pytest.raises(ComponentError) as raised:
        AwsEmulator().start()
    assert "moto's server mode is not installed" in str(raised.value)
    assert INSTALL_HINT in str(raised.value)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_motos_process_dies_with_the_process_that_started_it(how: signal.Signals) -> None:
    script = textwrap.dedent(
        """
        import threading
        from emulator.stack.moto import AwsEmulator

        aws = AwsEmulator()
        aws.start()
        print(aws.pid, flush=True)
        threading.Event().wait()
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as parent:
        try:
            assert parent.stdout is not None
            moto_pid = int(parent.stdout.readline())
            assert psutil.pid_exists(moto_pid)
            parent.send_signal(how)
            parent.wait(10)
            assert _gone(moto_pid, timeout=10), "moto's process outlived its parent"
        finally:
            parent.kill()


def test_up_starts_moto_before_its_imports_and_its_stack_adopts_it() -> None:
    script = textwrap.dedent(
        """
        import sys
        from emulator.stack import moto_process

        moto_process.prestart()
        early = moto_process._prestarted
        assert "emulator.stack.embedded" not in sys.modules
        from emulator.stack.moto import AwsEmulator

        aws = AwsEmulator()
        aws.start()
        assert early is not None and aws.pid == early.pid, "the stack started a second moto"
        aws.stop()
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
        check=False,
    )
    assert done.stdout.strip() == "ok", done.stderr


def _port(aws: AwsEmulator) -> int:
    return int(aws.endpoint_url.rsplit(":", 1)[1])


def test_the_announced_port_is_motos_while_it_starts() -> None:
    """The endpoint is known before moto answers (the stack hands it to processes it starts
    meanwhile): no other program can take its port while moto imports, and a client that connects
    that early is answered once moto serves."""
    aws = AwsEmulator()
    aws.launch()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other, pytest.raises(OSError) as taken:  # noqa: PT011 - its errno is checked
            other.bind((LOOPBACK, _port(aws)))
        assert taken.value.errno == errno.EADDRINUSE
        assert aws.client("sts").get_caller_identity()["Account"]
        aws.wait_ready()
    finally:
        aws.stop()


def test_a_moto_process_that_died_leaves_its_port_refusing_and_nothing_open() -> None:
    """Only moto's process listens: a client of a moto that died is refused, not left waiting in a
    backlog nobody serves. Stopping it closes this side's pipes too, also when it had died."""
    this = psutil.Process()
    files_before = this.num_fds()
    moto = MotoProcess(DEFAULT_REGION)
    port = moto.port()
    os.kill(moto.pid, signal.SIGKILL)
    assert _gone(moto.pid, timeout=10), "moto's process did not die"
    # Reaped there: a killed process's threads may hold its files a moment after it is a zombie.
    moto.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK, port), timeout=5).close()
    assert this.num_fds() == files_before
