"""Pinned sessions, read back from the proxy's log: which client, which database connection, and RDS
Proxy's reason and statement digest.

The log is what RDS Proxy gives you in CloudWatch too, so this is how a pin is found on AWS. The
pattern is made from the line the proxy writes (proxylog.PINNED), so the two cannot drift apart.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from emulator.rdsproxy.proxylog import DIGEST_PATTERN, PINNED


@dataclass(frozen=True)
class Pin:
    """A client session pinned to its database connection until it disconnects."""

    client_connection: int
    db_connection: int
    # RDS Proxy's reason, without its digest ("SQL changed session settings that the proxy doesn't
    # track. Consider moving session configuration to the proxy's initialization query.").
    reason: str
    # The statement as RDS Proxy logs it ("set search_path = $1"); None for reasons without one
    # (a statement over 16 KB, a Parse message under the legacy rule).
    digest: str | None
    # When the proxy logged it (UTC, as the log line: 2026-01-02T03:04:05.678Z).
    logged_at: str

    def __str__(self) -> str:
        where = f"clientConnection={self.client_connection} dbConnection={self.db_connection}"
        digest = "" if self.digest is None else f' Digest: "{self.digest}".'
        return f"[{where}] {self.reason}{digest}"


def _line_pattern(template: str) -> re.Pattern[str]:
    """The log line of a template: its text literally, its fields as named groups."""
    fields = {"client": r"(?P<client>\d+)", "db": r"(?P<db>\d+)", "reason": r"(?P<reason>.*)"}
    pattern = r"^(?P<logged_at>\S+) \[WARN\] "
    for literal, field, _, _ in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if field is not None:
            pattern += fields.get(field, r"[^\]]*")
    return re.compile(pattern + "$")


_PINNED_LINE = _line_pattern(PINNED)


def pins_in(log: str) -> list[Pin]:
    """The pins a stretch of the proxy's log records, in order."""
    pins = []
    for line in log.splitlines():
        found = _PINNED_LINE.match(line)
        if found is None:
            continue
        reason = found["reason"]
        with_digest = DIGEST_PATTERN.match(reason)
        pins.append(
            Pin(
                client_connection=int(found["client"]),
                db_connection=int(found["db"]),
                reason=with_digest["head"] if with_digest else reason,
                digest=with_digest["digest"] if with_digest else None,
                logged_at=found["logged_at"],
            )
        )
    return pins
