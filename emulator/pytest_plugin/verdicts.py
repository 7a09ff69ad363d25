"""What fails a test: a session RDS Proxy pinned that the test did not declare, and a database that
served more connections than the proxy's cap. Each verdict is a message in RDS Proxy's words, or
None when the test is fine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emulator.twin.pins import Pin

ALLOW_PIN = "twin_allow_pin"
ALLOW_PIN_HELP = (
    f"{ALLOW_PIN}(*patterns): the test may pin RDS Proxy sessions; with patterns, only pins whose "
    "statement digest or reason matches one of them (re.search, any case)"
)
# A digest's first words make the pattern a failure message suggests: "set statement_timeout".
_FIRST_WORDS = re.compile(r"^\w+(?:\s+\w+)?")
# For the reasons RDS Proxy gives without a digest (a statement over 16 KB, a Parse message under
# the legacy rule), a phrase of the reason: an empty marker would allow every pin.
_REASON_PHRASES = ("16384 byte limit", "parse message")


def unexpected_pins(pins: Sequence[Pin], allowed: Sequence[str] | None) -> list[Pin]:
    """The pins no declaration covers. allowed: None without a declaration, () when any pin is
    allowed, else patterns one of which a pin's digest or reason must match."""
    if allowed is None:
        return list(pins)
    if not allowed:
        return []
    return [
        pin
        for pin in pins
        if not any(
            re.search(pattern, text, re.IGNORECASE)
            for pattern in allowed
            for text in (pin.digest or "", pin.reason)
        )
    ]


def pin_failure(pins: Sequence[Pin], twin_name: str) -> str:
    """Why a test that pinned fails: each pin with RDS Proxy's reason and digest, and how to declare it."""
    sessions = "session" if len(pins) == 1 else "sessions"
    lines = [f"RDS Proxy pinned {len(pins)} {sessions} during this test ({twin_name}):"]
    for pin in pins:
        lines.append(
            f"  clientConnection={pin.client_connection} dbConnection={pin.db_connection}: {pin.reason}"
        )
        if pin.digest is not None:
            lines.append(f'    Digest: "{pin.digest}"')
    lines.append(
        "A pinned session keeps its database connection to itself until the client disconnects, and a "
        "Lambda environment keeps its connection while frozen: each pinned environment takes one "
        "connection out of the pool."
    )
    lines.append(f"If the test means to pin, mark it: @pytest.mark.{ALLOW_PIN}({_suggested_pattern(pins)})")
    return "\n".join(lines)


def _suggested_pattern(pins: Sequence[Pin]) -> str:
    """The one pattern that allows every pin here, or none (the marker then allows any pin)."""
    patterns = {_pattern(pin) for pin in pins}
    if len(patterns) != 1 or None in patterns:
        return ""
    return f'"{patterns.pop()}"'


def _pattern(pin: Pin) -> str | None:
    """A pattern that allows this pin and not others: its digest's first words, or a phrase of its
    reason; None when there is none."""
    if pin.digest is not None:
        found = _FIRST_WORDS.match(pin.digest)
        return found[0] if found else None
    reason = pin.reason.lower()
    return next((phrase for phrase in _REASON_PHRASES if phrase in reason), None)


def cap_failure(*, cap: int, proxy_peak: int, database_peak: int) -> str | None:
    """Why a test that needed more database connections than the cap fails, if it did."""
    if max(proxy_peak, database_peak) <= cap:
        return None
    text = (
        f"The database served up to {database_peak} connection(s) of the application's role during this "
        f"test; the proxy opened up to {proxy_peak}, and its cap (MaxDatabaseConnectionsAllowed) is {cap}."
    )
    if database_peak > proxy_peak:
        text += (
            " The connections beyond the proxy's did not come through it: check that every function "
            "connects to the proxy's endpoint (DB_PROXY_ENDPOINT), not to PostgreSQL (PGHOST)."
        )
    return text
