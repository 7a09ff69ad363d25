"""Every line the proxy logs, against the real RDS Proxy lines quoted in the reference (section 2.4).

Real lines are normalised the way the reference quotes them (IP:PORT, numbers); the emulator's
lines must read the same. Lines AWS's documentation and the reports never show are the emulator's
own wording, listed apart so that a change to them is deliberate.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pytest

from emulator.rdsproxy import texts
from emulator.rdsproxy.lending import MID_REQUEST, RELEASED_AFTER_RESET
from emulator.rdsproxy.protocol.pinning import REASON_SETTINGS, REASON_TOO_LONG
from emulator.rdsproxy.proxylog import ProxyLog

pytestmark = pytest.mark.unit


@dataclass
class Client:
    id: int = 3888679423
    peer: str = "10.0.1.25:50432"


@dataclass
class Database:
    id: int = 7


def _lines(write: str) -> list[str]:
    stream = io.StringIO()
    log = ProxyLog(stream)
    client, db = Client(), Database()
    {
        "connected": lambda: log.client_connected(client),
        "closed by the client": lambda: log.client_closed(client, texts.CLIENT_REQUESTED_CLOSE),
        "closed by tcp": lambda: log.client_closed(client, texts.TCP_CLOSED),
        "db opened": lambda: log.db_opened("10.0.1.9:41000", "10.0.2.7:5432"),
        "db released": lambda: log.db_released(db, RELEASED_AFTER_RESET),
        "db closed mid-request": lambda: log.db_closed(db, MID_REQUEST),
        "pinned": lambda: log.pinned(client, db, REASON_SETTINGS.format(digest="set client_encoding to $1")),
        "pinned too long": lambda: log.pinned(client, db, REASON_TOO_LONG),
    }[write]()
    return stream.getvalue().splitlines()


def _normalised(line: str) -> str:
    """The line without its timestamp, ids and addresses, as the reference quotes real lines. The
    log histogram the INFO lines come from shows no [clientConnection=...]; the emulator writes it,
    as real pin lines have it, and it is left out here."""
    line = re.sub(r"^\S+Z ", "", line)
    line = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "IP:PORT", line)
    line = re.sub(r"=\d+\]", "=N]", line)
    return line if "[WARN]" in line else line.replace("[clientConnection=N] ", "")


# Quoted in the reference, section 2.4, from real RDS Proxy logs (a 2026 log histogram; prisma#5866;
# postgrex#514; the smily.com Rails post), normalised the same way.
REAL = {
    "connected": "[INFO] [default] A new client connected from IP:PORT.",
    "closed by the client": "[INFO] [default] The client connection closed. Reason: "
    "The client requested that the connection close.",
    "closed by tcp": "[INFO] [default] The client connection closed. Reason: The TCP "
    "channel was closed by either the client or the proxy.",
    "db opened": "[INFO] A TCP connection was established from the proxy at IP:PORT to the database at IP:PORT.",
    "db released": "[INFO] [dbConnection=N] The database connection was released to the connection pool "
    "upon session reset.",
    "db closed mid-request": "[INFO] [dbConnection=N] The database connection closed. Reason: The client "
    "connection that borrowed this database connection from the connection pool was closed in the middle "
    "of a request.",
    "pinned": "[WARN] [proxyEndpoint=default] [clientConnection=N] The client session was pinned to the "
    "database connection [dbConnection=N] for the remainder of the session. The proxy can't reuse this "
    "connection until the session ends. Reason: SQL changed session settings that the proxy doesn't track. "
    "Consider moving session configuration to the proxy's initialization query. Digest: "
    '"set client_encoding to $1".',
    "pinned too long": "[WARN] [proxyEndpoint=default] [clientConnection=N] The client session was pinned to "
    "the database connection [dbConnection=N] for the remainder of the session. The proxy can't reuse this "
    "connection until the session ends. Reason: The connection ran a SQL query which exceeded the 16384 "
    "byte limit.",
}


@pytest.mark.parametrize("line", list(REAL))
def test_the_line_reads_as_real_rds_proxy_logs_show_it(line: str) -> None:
    (written,) = _lines(line)
    assert _normalised(written) == REAL[line]


def test_the_emulators_own_wording_is_known_and_deliberate() -> None:
    # Reasons AWS's documents and the reports never show: the emulator's words (README, settings).
    assert (
        texts.IDLE_CLIENT_CLOSE == "The client connection was idle for longer than the idle client timeout."
    )
    assert texts.CLIENT_LIFETIME_CLOSE.startswith("The client connection reached the maximum client")
    assert texts.BORROW_TIMEOUT_CLOSE == "The proxy timed out waiting to acquire a database connection."
