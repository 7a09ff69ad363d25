"""The RDS Proxy emulator's process started ahead of its configuration (the stack starts it while moto
and PostgreSQL start, and completes it with the secret's ARN)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulator.net import free_port
from emulator.stack.moto import AwsEmulator
from emulator.stack.rdsproxy import RdsProxyEmulator, emulator_config, start_ahead

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_a_proxy_whose_configuration_never_comes_gives_up(tmp_path: Path) -> None:
    config = tmp_path / "proxy.json"
    done = subprocess.run(
        [sys.executable, "-m", "emulator.rdsproxy", "--config", str(config), "--wait-for-config", "0.3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"no configuration at {config} after 0.3 s" in done.stderr


def test_a_proxy_started_ahead_listens_once_its_configuration_is_written(
    tmp_path: Path, aws: AwsEmulator
) -> None:
    workdir = tmp_path / "rdsproxy"
    process = start_ahead(workdir, aws.environment())
    try:
        time.sleep(0.5)  # it waits, loading the proxy: no configuration, nothing listening
        assert process.exit_reason() is None
        assert not (workdir / "ready.json").exists()
        secret = aws.create_db_secret("db", username="app_user", password="pw")
        config = emulator_config(
            # Nothing listens there: the proxy listens anyway and waits for its target.
            target_host="127.0.0.1",
            target_port=free_port(),
            secret_arn=secret,
            aws_endpoint_url=aws.endpoint_url,
            region=aws.credentials.region,
            tls_cert_file="",
            tls_key_file="",
            settings={"require_tls": False, "iam_auth": "DISABLED"},
        )
        emulator = RdsProxyEmulator(workdir, config, environment=aws.environment(), started_ahead=process)
        emulator.launch()
        process.wait_ready((workdir / "ready.json").exists, timeout=30)
        # It bound a free port of its own choosing and named it in its ready file.
        port = json.loads((workdir / "ready.json").read_text())["port"]
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert emulator.pid == process.pid
        emulator.stop()
        assert process.exit_reason() is not None
    finally:
        process.stop()
