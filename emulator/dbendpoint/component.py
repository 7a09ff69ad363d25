"""The database endpoints as a component of the local stack: their own process, like the proxy's.

endpoint = DatabaseEndpoint(workdir / "dbendpoint", EndpointSettings(topology_file=..., ...))
endpoint.start()          # returns once listening; endpoint.writer_port, .reader_port, .instance_ports
...
endpoint.stop()
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from emulator.dbendpoint.settings import EndpointSettings
from emulator.stack.process import ManagedProcess

COMPONENT = "database endpoint"


class DatabaseEndpoint:
    """`python -m emulator.dbendpoint` with a settings file written into workdir."""

    def __init__(
        self, workdir: Path, settings: EndpointSettings, *, environment: Mapping[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.settings = settings
        self.environment = dict(environment or {})
        self.host = settings.listen_host
        self.writer_port = 0
        self.reader_port: int | None = None
        self.instance_ports: dict[str, int] = {}
        self._process: ManagedProcess | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "dbendpoint.log"

    @property
    def ready_file(self) -> Path:
        return self.workdir / "ready.json"

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self, timeout: float = 30) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "dbendpoint.json"
        config_file.write_text(self.settings.to_json())
        # A ready file left by an earlier run here would make a dead process look ready.
        self.ready_file.unlink(missing_ok=True)
        self._process = ManagedProcess(
            COMPONENT,
            [
                sys.executable,
                "-m",
                "emulator.dbendpoint",
                "--config",
                str(config_file),
                "--ready-file",
                str(self.ready_file),
            ],
            log_path=self.log_path,
            env={**os.environ, **self.environment},
            stop_signal=signal.SIGTERM,
        )
        self._process.start()
        try:
            self._process.wait_ready(self.ready_file.exists, timeout=timeout)
            self.read_ports()
        except BaseException:
            # An endpoint that never became ready must not outlive its start().
            self.stop()
            raise

    def read_ports(self) -> None:
        """The ports from the ready file (again after instances were added to the topology)."""
        ports = json.loads(self.ready_file.read_text())
        self.writer_port = int(ports["writer"])
        self.reader_port = int(ports["reader"]) if ports["reader"] is not None else None
        self.instance_ports = {str(name): int(port) for name, port in ports["instances"].items()}

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
