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

from emulator.net import LOOPBACK
from emulator.rdsproxy.config import ProxyConfig
from emulator.stack.process import ManagedProcess

COMPONENT = "RDS Proxy emulator"


class RdsProxyEmulator:
    """`python -m emulator proxy` with a configuration file the stack writes."""

    kind = "emulator"

    def __init__(
        self,
        workdir: Path,
        config: ProxyConfig,
        *,
        environment: Mapping[str, str],
        started_ahead: ManagedProcess | None = None,
    ) -> None:
        # Its own directory (configuration, ready file, log), made at start().
        self.workdir = workdir
        self.config = config
        self.environment = dict(environment)
        self.host = config.listen_host
        self.port = config.listen_port
        # Its process, when start_ahead() started it in workdir before this configuration was known.
        self._started_ahead = started_ahead
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

    def start(self, timeout: float = 60) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process, not waiting for it: the stack starts it while PostgreSQL still starts
        (it waits for its target), then waits for it with wait_ready()."""
        if self._started_ahead is not None:
            # Written whole, then renamed: the waiting process reads it once it exists.
            partial = _config_file(self.workdir).with_suffix(".partial")
            partial.write_text(self.config.to_json())
            os.replace(partial, _config_file(self.workdir))
            self._process, self._started_ahead = self._started_ahead, None
            return
        self._process = _process(self.workdir, self.environment)
        _config_file(self.workdir).write_text(self.config.to_json())
        self._process.start()

    def wait_ready(self, timeout: float = 60) -> None:
        """Until it listens and has reached its target; a proxy that does not must not outlive this."""
        try:
            self._wait_ready(_ready_file(self.workdir), timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, ready_file: Path, timeout: float) -> None:
        assert self._process is not None
        self._process.wait_ready(ready_file.exists, timeout=timeout)
        self._ready = json.loads(ready_file.read_text())
        self.port = int(self._ready["port"])
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
        for process in (self._process, self._started_ahead):
            if process is not None:
                process.stop()
        self._process = self._started_ahead = None


# How long a process started ahead waits for its configuration before it gives up.
WAIT_FOR_CONFIG_SECONDS = 300


def start_ahead(workdir: Path, environment: Mapping[str, str]) -> ManagedProcess:
    """The emulator's process, started before its configuration is known (the secret's ARN comes from
    moto): it loads the proxy meanwhile and starts when RdsProxyEmulator(..., started_ahead=...)
    .launch() writes the configuration."""
    process = _process(workdir, environment, wait_for_config=True)
    process.start()
    return process


def _config_file(workdir: Path) -> Path:
    return workdir / "proxy.json"


def _ready_file(workdir: Path) -> Path:
    return workdir / "ready.json"


def _process(
    workdir: Path, environment: Mapping[str, str], *, wait_for_config: bool = False
) -> ManagedProcess:
    workdir.mkdir(exist_ok=True)
    # A ready file left by an earlier run in this directory would make a dead proxy look ready.
    _ready_file(workdir).unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "emulator.rdsproxy",
        "--config",
        str(_config_file(workdir)),
        "--ready-file",
        str(_ready_file(workdir)),
    ]
    if wait_for_config:
        argv += ["--wait-for-config", str(WAIT_FOR_CONFIG_SECONDS)]
    return ManagedProcess(
        COMPONENT,
        argv,
        log_path=workdir / "proxy.log",
        env={**os.environ, **environment},
        stop_signal=signal.SIGTERM,
    )


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
        # 0: the proxy binds free ports itself and names them in its ready file. A port picked here
        # and bound by the proxy's process a moment later can be taken in between (it was, once, by
        # another connection's source port).
        "listen_port": 0,
        "stats_port": 0,
        "target_host": target_host,
        "target_port": target_port,
        "secret_arn": secret_arn,
        "aws_endpoint_url": aws_endpoint_url,
        "region": region,
        "tls_cert_file": tls_cert_file,
        "tls_key_file": tls_key_file,
    }
    return ProxyConfig.from_mapping({**base, **settings})
