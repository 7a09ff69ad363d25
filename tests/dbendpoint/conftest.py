"""Real PostgreSQL servers (independent ones: routing does not need replication) and database
endpoint processes in front of them, started per test from a topology file the test writes."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from emulator.dbendpoint.component import DatabaseEndpoint
from emulator.dbendpoint.settings import EndpointSettings
from emulator.net import LOOPBACK
from emulator.stack.postgres import PostgresServer, PostgresSettings, find_postgres_binaries
from emulator.stack.process import hand_over, service_user
from emulator.stack.tls import LocalCA

APP_USER = "app"
APP_DATABASE = "appdb"
APP_PASSWORD = secrets.token_urlsafe(12)
TLS_HOSTNAMES = ["localhost", LOOPBACK]


@dataclass
class Lab:
    """A directory the service user may enter, its certificate authority, and servers by letter."""

    workdir: Path
    ca: LocalCA
    servers: dict[str, PostgresServer]

    def start_server(self, letter: str) -> PostgresServer:
        directory = self.workdir / f"pg-{letter}"
        directory.mkdir()
        hand_over(directory, service_user())
        server = PostgresServer(
            directory,
            find_postgres_binaries(),
            PostgresSettings(max_connections=30),
            user=service_user(),
            certificate=self.ca.issue_server(f"postgres-{letter}", TLS_HOSTNAMES),
            superuser_password=secrets.token_urlsafe(12),
        )
        server.initialize()
        server.start()
        try:
            server.create_app_database(database=APP_DATABASE, user=APP_USER, password=APP_PASSWORD)
        except BaseException:
            server.stop()
            raise
        self.servers[letter] = server
        return server


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """Three servers, a, b and c: a writer and two replicas as far as the endpoints can tell."""
    # Under /tmp with the stack's prefix: the service user can enter it, and the session's orphan
    # check (tests/conftest.py) sees every process started in it.
    workdir = Path(tempfile.mkdtemp(prefix="local-twin-dbendpoint-"))
    hand_over(workdir, service_user())
    lab = Lab(workdir, LocalCA(workdir), {})
    try:
        for letter in "abc":
            lab.start_server(letter)
        yield lab
    finally:
        for server in lab.servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def instance(
    name: str, server: PostgresServer | int, role: str, readable: bool | None = None
) -> dict[str, Any]:
    port = server if isinstance(server, int) else server.port
    return {
        "name": name,
        "host": LOOPBACK,
        "port": port,
        "role": role,
        "readable": role in ("writer", "reader") if readable is None else readable,
    }


def topology(
    writer: str,
    *instances: dict[str, Any],
    kind: str = "aurora",
    generation: int = 1,
    changed_at: float | None = None,
) -> dict[str, Any]:
    return {
        "generation": generation,
        "kind": kind,
        "writer": writer,
        "changed_at": time.time() if changed_at is None else changed_at,
        "instances": list(instances),
    }


def write_topology(path: Path, data: dict[str, Any]) -> None:
    """As the cluster writes it: whole, then renamed over the old one."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


_numbers = itertools.count(1)


@dataclass
class RunningEndpoint:
    process: DatabaseEndpoint
    topology_file: Path

    @property
    def writer_port(self) -> int:
        return self.process.writer_port

    @property
    def reader_port(self) -> int:
        assert self.process.reader_port is not None
        return self.process.reader_port

    def change(self, data: dict[str, Any]) -> None:
        write_topology(self.topology_file, data)


@pytest.fixture
def make_endpoint(lab: Lab) -> Iterator[Callable[..., RunningEndpoint]]:
    """make_endpoint(topology, **settings): a database endpoint process, stopped after the test."""
    started: list[DatabaseEndpoint] = []

    def make(data: dict[str, Any], **settings: Any) -> RunningEndpoint:
        directory = lab.workdir / f"dbendpoint-{next(_numbers)}"
        directory.mkdir()
        topology_file = directory / "topology.json"
        write_topology(topology_file, data)
        endpoint = DatabaseEndpoint(directory, EndpointSettings(topology_file=str(topology_file), **settings))
        started.append(endpoint)
        endpoint.start()
        return RunningEndpoint(endpoint, topology_file)

    yield make
    for endpoint in started:
        endpoint.stop()


def conninfo(port: int, **extra: Any) -> str:
    options: dict[str, Any] = {
        "host": LOOPBACK,
        "port": port,
        "user": APP_USER,
        "password": APP_PASSWORD,
        "dbname": APP_DATABASE,
        "sslmode": "disable",
        "connect_timeout": 10,
        **extra,
    }
    return psycopg.conninfo.make_conninfo("", **options)


def connect(port: int, **extra: Any) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(conninfo(port, **extra), autocommit=True)


def server_port(port: int, **extra: Any) -> int:
    """Which server a new connection to port reaches (each server has its own port)."""
    with connect(port, **extra) as conn:
        row = conn.execute("SELECT current_setting('port')::int").fetchone()
        assert row is not None
        return int(row[0])
