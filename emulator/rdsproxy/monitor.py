"""How the proxy learns what each instance of its target is: it connects and asks.

RDS Proxy "bypasses DNS caches": it monitors its targets itself rather than following an endpoint's
name. Here an instance is the writer when it answers pg_is_in_recovery() with false, a readable
replica when it answers true, and a standby that is not readable when it refuses the connection with
57P03 (hot_standby = off: "the database system is not accepting connections").
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass

from emulator.rdsproxy.config import Instance
from emulator.rdsproxy.dbconn import Credentials, DatabaseError, DatabaseUnavailable, DbConnection, PoolKey

# How long one question to one instance may take; an instance that does not answer in time is
# unreachable for this round (a stopped process refuses at once; a frozen one would not answer).
PROBE_TIMEOUT_SECONDS = 2.0
_CANNOT_CONNECT_NOW = "57P03"


class Role(enum.Enum):
    WRITER = "writer"
    READER = "reader"  # a readable replica (Aurora reader, hot standby)
    STANDBY = "standby"  # not readable (Multi-AZ standby), or starting up / shutting down
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Observation:
    instance: Instance
    role: Role
    detail: str = ""


async def observe(
    instance: Instance, credentials: Credentials, *, timeout: float, tls: bool = False
) -> Observation:
    """The instance's role now, from a short-lived connection of the proxy's own (over TLS when its
    credentials are an IAM token, which a database accepts only over TLS)."""
    key = PoolKey("postgres", credentials.user, tls=tls)
    try:
        conn = await DbConnection.open(
            instance.host,
            instance.port,
            key,
            credentials,
            application_name="",
            init_query="",
            timeout=timeout,
        )
    except DatabaseError as exc:
        role = Role.STANDBY if exc.sqlstate == _CANNOT_CONNECT_NOW else Role.UNREACHABLE
        return Observation(instance, role, str(exc))
    except DatabaseUnavailable as exc:
        return Observation(instance, Role.UNREACHABLE, str(exc))
    try:
        recovering = await asyncio.wait_for(conn.fetch_value("SELECT pg_is_in_recovery()"), timeout)
    except (DatabaseError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return Observation(instance, Role.UNREACHABLE, repr(exc))
    finally:
        conn.close()
    return Observation(instance, Role.READER if recovering == "t" else Role.WRITER)


async def observe_all(
    instances: list[Instance], credentials_for: Callable[[Instance], Credentials], *, tls: bool = False
) -> list[Observation]:
    """Every instance at once (one that hangs does not hold the others up), in the given order."""
    return list(
        await asyncio.gather(
            *(
                observe(instance, credentials_for(instance), timeout=PROBE_TIMEOUT_SECONDS, tls=tls)
                for instance in instances
            )
        )
    )
