"""The local twin's Python API: `from emulator.twin import LocalTwin`.

with LocalTwin(handler="orders.handler", code="function", init_sql="schema",
               env={"DB_HOST": "${DB_PROXY_ENDPOINT}"}) as twin:
    twin.invoke("local-twin-fn", {"action": "list"}).json()

local      LocalTwin: start and stop, connection parameters, invoke, bursts, stats, pins, logs, failover
options    TwinOptions: `up`'s options by name, and the TwinConfig they make
config     TwinConfig: the stack's settings and the functions, with their environments
endpoints  ConnectionParams: libpq's parameters for the proxy or PostgreSQL
stats      ProxyStats (the emulator's counters), Connections (counted outside the proxy)
pins, logs Pin (a pinned session, its reason and digest); checkpoints and what was logged since
"""

from emulator.awslambda.function import Invocation
from emulator.stack.cluster import FailoverReport
from emulator.tools.burst import BurstResult
from emulator.twin.config import TwinConfig
from emulator.twin.endpoints import ConnectionParams
from emulator.twin.local import LocalTwin
from emulator.twin.logs import Checkpoint, TwinLogs
from emulator.twin.options import OptionError, TwinOptions
from emulator.twin.pins import Pin
from emulator.twin.stats import Connections, Latency, ProxyStats

__all__ = [
    "BurstResult",
    "Checkpoint",
    "ConnectionParams",
    "Connections",
    "FailoverReport",
    "Invocation",
    "Latency",
    "LocalTwin",
    "OptionError",
    "Pin",
    "ProxyStats",
    "TwinConfig",
    "TwinLogs",
    "TwinOptions",
]
