"""Watching pg_stat_activity while a workload runs: how many backends the application really used."""

from __future__ import annotations

import threading
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from emulator.postgres import PostgresEndpoint, count_backends


@dataclass
class ConnectionSamples:
    """A time series of backend counts for one role, in seconds since sampling started."""

    times: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(self.counts, default=0)


class BackendSampler:
    """Samples the role's client backends on a fixed period from a background thread.

    It holds one superuser connection for the whole run, opened before the workload starts, so a
    full server (the very thing being shown) cannot lock it out.
    """

    def __init__(
        self,
        postgres: PostgresEndpoint,
        *,
        user: str,
        period: float = 0.01,
        exclude: AbstractSet[int] = frozenset(),
    ) -> None:
        self.postgres = postgres
        self.user = user
        # Backends to leave out: other proxies' idle pooled connections.
        self.exclude = list(exclude)
        self.period = period
        self.samples = ConnectionSamples()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="backend-sampler", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._error is not None and exc is None:
            raise self._error

    def _run(self) -> None:
        try:
            with self.postgres.admin_connection() as conn:
                started = time.monotonic()
                self._ready.set()
                while True:
                    count = count_backends(conn, user=self.user, exclude_pids=self.exclude)
                    self.samples.times.append(time.monotonic() - started)
                    self.samples.counts.append(count)
                    if self._stop.wait(self.period):
                        break
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._error = exc
            self._ready.set()
