"""Independent PostgreSQL servers with the stack's application role, to stand in for a target's
instances (no replication: each answers pg_is_in_recovery() with false, so the first one
reachable in target_instances' order is the writer)."""

from __future__ import annotations

import secrets
import signal
import threading
from pathlib import Path
from typing import Any

import psycopg

from emulator.stack.embedded import TLS_HOSTNAMES, EmbeddedStack
from emulator.stack.postgres import PostgresServer, PostgresSettings, find_postgres_binaries
from emulator.stack.process import hand_over


def start_instance(stack: EmbeddedStack, name: str) -> PostgresServer:
    """A PostgreSQL server of its own with the stack's database, role and password."""
    workdir: Path = stack.workdir / name
    workdir.mkdir()
    hand_over(workdir, stack.user)
    server = PostgresServer(
        workdir,
        find_postgres_binaries(),
        PostgresSettings(max_connections=20),
        user=stack.user,
        certificate=stack.ca.issue_server(name, TLS_HOSTNAMES),
        superuser_password=secrets.token_urlsafe(18),
    )
    server.initialize()
    server.start()
    server.create_app_database(
        database=stack.config.database, user=stack.config.db_user, password=stack.db_password
    )
    return server


def stop_immediately(server: PostgresServer) -> None:
    """PostgreSQL's immediate shutdown (SIGQUIT), as a failover fences the old writer: every backend
    goes at once, with a WARNING to its client and no rollback or checkpoint."""
    process = server._process  # the stop signal of this one stop
    assert process is not None
    process.stop_signal = signal.SIGQUIT
    server.stop()


class LongStatements:
    """One long statement per connection, each on a thread of its own, in flight until the failover
    ends it: outcomes() gives each one's end, "finished" or its psycopg error."""

    def __init__(self, conns: list[psycopg.Connection[Any]]) -> None:
        self._ends: dict[int, object] = {}
        self._threads = [
            threading.Thread(target=self._run, args=(index, conn)) for index, conn in enumerate(conns)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int, conn: psycopg.Connection[Any]) -> None:
        try:
            conn.execute("SELECT pg_sleep(60)")
            self._ends[index] = "finished"
        except psycopg.Error as exc:
            self._ends[index] = exc

    def outcomes(self, timeout: float = 20) -> list[object]:
        for thread in self._threads:
            thread.join(timeout)
        assert not any(thread.is_alive() for thread in self._threads), "a client in a statement hangs"
        return [self._ends[index] for index in range(len(self._threads))]
