"""Things that start and stop: `with Thing(...) as thing:` starts it and always stops it.

A start that fails half-way stops what it had started before the error goes on, so nothing it
started outlives the `with` statement.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Started:
    """Subclasses define start() and stop(); stop() must cope with a start() that failed half-way."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
