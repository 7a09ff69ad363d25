"""What a steady load saw of a failover: errors, the longest interruption, the calls that waited.

Pure functions over the calls' times, so the figures the failover demonstration prints are pinned
down by unit tests rather than by whichever failover happened to run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from emulator.tools.steady import Call


@dataclass(frozen=True)
class FailoverMoments:
    """time.monotonic() instants of one failover: it started (the writer was fenced), a new writer
    accepted writes, and the database endpoint's name pointed at it (after the DNS-like delay)."""

    started: float
    writer_ready: float
    endpoint_switched: float


@dataclass(frozen=True)
class Interruption:
    calls: int
    succeeded: int
    errors: Counter[str]
    # The longest time between two consecutive successful calls' ends: what a user of the function
    # experiences as "down". With no failure it is about the load's period / workers.
    longest_gap: float
    # When that gap began, in seconds since the load started.
    gap_started: float
    # Calls in flight when the new writer became ready that still succeeded: they waited through
    # the failover instead of failing.
    waited: int
    # Seconds from the failover's start to the first successful call that started after it.
    recovered_after: float | None

    @property
    def failed(self) -> int:
        return self.calls - self.succeeded


def interruption(calls: Sequence[Call], moments: FailoverMoments, origin: float) -> Interruption:
    """The figures for one way; `origin` is the load's start (the zero of gap_started)."""
    ok_ends = sorted(call.ended for call in calls if call.ok)
    longest, began = 0.0, origin
    previous = origin
    # A way that never recovers is down from its last success to the end of its last call, too.
    ends = [*ok_ends, max(call.ended for call in calls)] if ok_ends else []
    for end in ends:
        if end - previous > longest:
            longest, began = end - previous, previous
        previous = end
    waited = sum(
        1 for call in calls if call.ok and moments.started <= call.started < moments.writer_ready < call.ended
    )
    fresh = [call.ended for call in calls if call.ok and call.started >= moments.started]
    errors = Counter(call.error for call in calls if call.error is not None)
    return Interruption(
        calls=len(calls),
        succeeded=len(ok_ends),
        errors=errors,
        longest_gap=longest,
        gap_started=began - origin,
        waited=waited,
        recovered_after=min(fresh) - moments.started if fresh else None,
    )


def shorter_by(proxied: Interruption, direct: Interruption) -> float | None:
    """How much shorter the proxied interruption was, as a fraction of the direct one (AWS's
    "reduce failover times by up to 66%" is 0.66); None when the direct path saw no interruption."""
    if direct.longest_gap <= 0:
        return None
    return 1.0 - proxied.longest_gap / direct.longest_gap
