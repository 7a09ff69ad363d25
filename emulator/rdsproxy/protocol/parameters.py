"""A client's session parameters: the ones it chose at startup, kept on every connection it borrows.

RDS Proxy lets a client choose five parameters in its startup packet. Database connections are shared,
so before a client uses one, the proxy makes the connection's parameters the client's (SET), and it
passes a ParameterStatus on to the client only when the client's view changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# The session parameters RDS Proxy lets clients choose at startup.
CLIENT_PARAMETERS = ("application_name", "client_encoding", "DateStyle", "TimeZone", "extra_float_digits")
# Not reported by the server (no ParameterStatus): the proxy remembers what it set.
UNREPORTED = "extra_float_digits"
Key = tuple[tuple[str, str], ...]


def canonical(name: str, value: str) -> str:
    """The spelling the server reports back, where it differs in a way we can predict."""
    if name == "client_encoding":
        # PostgreSQL ignores all but letters and digits in an encoding's name (asyncpg sends 'utf-8',
        # quotes included).
        cleaned = "".join(c for c in value.upper() if c.isalnum())
        return "UTF8" if cleaned in ("UTF8", "UNICODE") else value.upper()
    return value


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_TOLD: Final[dict[tuple[Key, Key], dict[str, str]]] = {}
_TOLD_MAX: Final = 256
_KEYS: Final[dict[Key, Key]] = {}


def _shared(key: Key) -> Key:
    """One key object for equal keys (most sessions have the same parameters): a borrow compares
    its connection's key with the client's by identity first, and idle clients share the tuple."""
    shared = _KEYS.get(key)
    if shared is None:
        if len(_KEYS) >= _TOLD_MAX:
            _KEYS.clear()
        shared = _KEYS[key] = key
    return shared


def _told_at_login(baseline: Mapping[str, str], key: Key) -> dict[str, str]:
    """The parameters a client is told at login (never changed in place: see SessionParameters.seen)."""
    cache_key = (tuple(baseline.items()), key)
    told = _TOLD.get(cache_key)
    if told is None:
        if len(_TOLD) >= _TOLD_MAX:
            _TOLD.clear()
        told = {**baseline, **{k: v for k, v in key if k != UNREPORTED}}
        _TOLD[cache_key] = told
    return told


class SessionParameters:
    """What the client asked for (wanted) and what it has been told (seen)."""

    def __init__(
        self,
        chosen: Mapping[str, str],
        baseline: Mapping[str, str],
        unreported: Mapping[str, str] | None = None,
    ) -> None:
        """chosen: the startup packet's; baseline: what the server reports by default; unreported:
        the server's defaults of what it does not report. A parameter the client did not choose is
        the server's default, set again on every connection it borrows: never what another client
        chose on the same connection."""
        defaults = {**baseline, **(unreported or {})}
        self.wanted: dict[str, str] = {}
        for name in CLIENT_PARAMETERS:
            value = next((v for k, v in chosen.items() if k.lower() == name.lower()), None)
            if value is None:
                value = defaults.get(name)
            if value is not None:
                self.wanted[name] = canonical(name, value)
        self.key: Key = _shared(tuple(self.wanted.items()))
        # What the client learns at login: the server's reported parameters, with its own choices.
        # Shared by the sessions that were told the same (most are), copied before it changes.
        self.seen: dict[str, str] = _told_at_login(baseline, self.key)
        self._seen_shared = True

    def alignment(self, reported: Mapping[str, str], unreported: Mapping[str, str]) -> str | None:
        """The SET statements that give a connection this client's parameters, or None."""
        sets = []
        for name, value in self.wanted.items():
            current = unreported.get(name) if name == UNREPORTED else reported.get(name)
            if current != value:
                sets.append(f"SET {name} = {_quote(value)}")
        return "; ".join(sets) if sets else None

    def aligned(self, reported: Mapping[str, str]) -> None:
        """After alignment: remember the server's spelling (ISO -> "ISO, MDY") so that the next
        borrow compares equal."""
        for name in self.wanted:
            if name != UNREPORTED and name in reported:
                self.wanted[name] = reported[name]
        self.key = _shared(tuple(self.wanted.items()))

    def restoration(self) -> str:
        """The SET statements that put back every parameter the client has (after a RESET)."""
        return "; ".join(f"SET {name} = {_quote(value)}" for name, value in self.wanted.items())

    def reported(self, name: str, value: str) -> bool:
        """The server reported a parameter: True when the client has not seen this value yet."""
        if self.seen.get(name) == value:
            return False
        if self._seen_shared:
            self.seen = dict(self.seen)
            self._seen_shared = False
        self.seen[name] = value
        return True
