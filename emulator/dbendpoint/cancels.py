"""Where a CancelRequest must go: the instance of the session whose BackendKeyData it names.

A client sends its cancel to the address it connected to (libpq keeps the session's address for
PQcancel), so on AWS a cancel reaches the session's own instance even after the name has moved.
Here every name is one port, so the endpoint remembers each session's key and instance.
"""

from __future__ import annotations

from emulator.dbendpoint.startup import CancelKey
from emulator.dbendpoint.topology import Instance


class CancelRoutes:
    def __init__(self) -> None:
        self._sessions: dict[CancelKey, Instance] = {}

    def add(self, key: CancelKey, instance: Instance) -> None:
        self._sessions[key] = instance

    def discard(self, key: CancelKey | None) -> None:
        if key is not None:
            self._sessions.pop(key, None)

    def find(self, key: CancelKey) -> Instance | None:
        return self._sessions.get(key)

    def __len__(self) -> int:
        return len(self._sessions)
