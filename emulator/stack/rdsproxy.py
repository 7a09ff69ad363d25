"""The RDS Proxy emulator as a component of the local stack: its own process, like PostgreSQL's."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emulator.net import LOOPBACK, free_port
from emulator.rdsproxy.config import ProxyConfig
from emulator.stack.process import ManagedProcess

COMPONENT = "RDS Proxy emulator"


class RdsProxyEmulator:
    """`python -m emulator proxy` with a configuration file the stack writes."""

    kind = "emulator"

    def __init__(self, workdir: Path, config: ProxyConfig, *, environment: Mapping[str, str]) -> None:
        # Its own directory (configuration, ready file, log), made at start().
        self.workdir = workdir
        self.config = config
        self.environment = dict(environment)
        self.host = config.listen_host
        self.port = config.listen_port
        self._process: ManagedProcess | None = None
        self.stats_port = 0
        self._ready: dict[str, Any] = {}

    @property
    def handler_auth(self) -> str:
        return "iam" if self.config.iam_auth == "REQUIRED" else "secret"

    @property
    def tls(self) -> bool:
        return self.config.tls_available

    @property
    def log_path(self) -> Path:
        return self.workdir / "proxy.log"

    @property
    def _ready_file(self) -> Path:
        return self.workdir / "ready.json"

    def start(self, timeout: float = 60) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process, not waiting for it: the stack starts it while PostgreSQL still starts
        (it waits for its target), then waits for it with wait_ready()."""
        self.workdir.mkdir(exist_ok=True)
        config_file = self.workdir / "proxy.json"
        config_file.write_text(self.config.to_json())
        ready_file = self._ready_file
        # A ready file left by an earlier run in this directory would make a dead proxy look ready.
        ready_file.unlink(missing_ok=True)
        env = {**os.environ, **self.environment}
        self._process = ManagedProcess(
            COMPONENT,
            [
                sys.executable,
                "-m",
                "emulator.rdsproxy",
                "--config",
                str(config_file),
                "--ready-file",
                str(ready_file),
            ],
            log_path=self.log_path,
            env=env,
            stop_signal=signal.SIGTERM,
        )
        self._process.start()

    def wait_ready(self, timeout: float = 60) -> None:
        """Until it listens and has reached its target; a proxy that does not must not outlive this."""
        try:
            self._wait_ready(self._ready_file, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, ready_file: Path, timeout: float) -> None:
        assert self._process is not None
        self._process.wait_ready(ready_file.exists, timeout=timeout)
        self._ready = json.loads(ready_file.read_text())
        self.stats_port = int(self._ready["stats_port"])
        self._process.wait_ready(
            lambda: bool(self.stats()["target_ready"]), timeout=timeout, what=" (reaching its target)"
        )

    def endpoints(self) -> dict[str, dict[str, Any]]:
        """The proxy's endpoints besides its default one, by name: {"port": N, "role": "READ_ONLY"}
        (aws_db_proxy_endpoint), from its ready file."""
        endpoints: dict[str, dict[str, Any]] = self._ready.get("endpoints") or {}
        return {name: endpoint for name, endpoint in endpoints.items() if name != "default"}

    def _get(self, path: str, *, method: str = "GET") -> Any:
        """A JSON answer of the proxy's HTTP endpoint."""
        request = urllib.request.Request(f"http://{LOOPBACK}:{self.stats_port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - our own loopback URL
            return json.loads(answer.read())

    def reset_peaks(self) -> None:
        """The peaks in stats() start again from the current values (a test's own window)."""
        self._get("/reset-peaks", method="POST")

    def stats(self) -> dict[str, Any]:
        """The live counters, from the proxy's /stats endpoint."""
        data: dict[str, Any] = self._get("/stats")
        return data

    def sessions(self) -> list[dict[str, Any]]:
        """What every client session is doing, from the proxy's /sessions endpoint."""
        data: list[dict[str, Any]] = self._get("/sessions")
        return data

    def metrics(self) -> dict[str, Any]:
        """The CloudWatch metric values right now, from the proxy's /metrics endpoint."""
        data: dict[str, Any] = self._get("/metrics")
        return data

    @property
    def pid(self) -> int:
        """The emulator's process id (for resident-memory measurements)."""
        assert self._process is not None, "not started"
        return self._process.pid

    def backend_pids(self) -> set[int]:
        return set(self.stats()["backend_pids"])

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None


def emulator_config(
    *,
    target_host: str,
    target_port: int,
    secret_arn: str,
    aws_endpoint_url: str,
    region: str,
    tls_cert_file: str,
    tls_key_file: str,
    settings: Mapping[str, Any],
) -> ProxyConfig:
    """The stack's emulator configuration: its own addresses, then the user's Terraform-named settings."""
    base: dict[str, Any] = {
        "listen_host": LOOPBACK,
        "listen_port": free_port(),
        "stats_port": free_port(),
        "target_host": target_host,
        "target_port": target_port,
        "secret_arn": secret_arn,
        "aws_endpoint_url": aws_endpoint_url,
        "region": region,
        "tls_cert_file": tls_cert_file,
        "tls_key_file": tls_key_file,
    }
    return ProxyConfig.from_mapping({**base, **settings})
