"""The failover demonstration's figures, from calls whose times are known."""

from __future__ import annotations

import pytest

from emulator.tools.interruption import FailoverMoments, interruption, shorter_by
from emulator.tools.steady import Call

MOMENTS = FailoverMoments(started=10.0, writer_ready=11.0, endpoint_switched=16.0)


def steady(start: float, end: float, step: float = 0.1, error: str | None = None) -> list[Call]:
    calls, at = [], start
    while at < end - 1e-9:
        calls.append(Call(at, at + 0.02, error))
        at += step
    return calls


def test_the_longest_gap_runs_from_the_last_success_before_the_outage_to_the_first_after() -> None:
    calls = steady(0.0, 10.0) + steady(10.0, 16.0, error="08006 gone") + steady(16.0, 20.0)
    outcome = interruption(calls, MOMENTS, origin=0.0)
    assert outcome.longest_gap == pytest.approx(16.02 - 9.92, abs=1e-6)
    assert outcome.gap_started == pytest.approx(9.92, abs=1e-6)
    assert outcome.failed == 60
    assert outcome.errors == {"08006 gone": 60}
    assert outcome.recovered_after == pytest.approx(6.02, abs=1e-6)


def test_a_call_that_waits_through_the_promotion_and_succeeds_is_counted_as_waited() -> None:
    calls = [*steady(0.0, 10.0), Call(10.2, 11.3), Call(10.5, 11.4), Call(9.5, 11.2), Call(10.1, 10.9)]
    outcome = interruption(calls, MOMENTS, origin=0.0)
    # Only calls started after the failover began and ended after the new writer was ready waited;
    # the one started before is in flight at the fence, the one done before the writer is not.
    assert outcome.waited == 2
    assert outcome.failed == 0
    assert outcome.recovered_after == pytest.approx(0.9, abs=1e-6)


def test_a_way_that_never_recovers_has_no_recovery_time() -> None:
    calls = steady(0.0, 10.0) + steady(10.0, 20.0, error="57P01 terminating")
    outcome = interruption(calls, MOMENTS, origin=0.0)
    assert outcome.recovered_after is None
    assert outcome.succeeded == 100


def test_gap_is_measured_from_the_load_start_when_nothing_ever_succeeded() -> None:
    outcome = interruption(steady(0.0, 1.0, error="x"), MOMENTS, origin=0.0)
    assert outcome.longest_gap == 0.0
    assert outcome.succeeded == 0


def test_shorter_by_compares_the_longest_gaps_as_aws_states_its_66_percent() -> None:
    direct = interruption(steady(0.0, 10.0) + steady(16.0, 20.0), MOMENTS, origin=0.0)
    proxied = interruption(steady(0.0, 10.0) + steady(11.0, 20.0), MOMENTS, origin=0.0)
    assert shorter_by(proxied, direct) == pytest.approx(1 - 1.1 / 6.1, abs=1e-3)
    assert shorter_by(proxied, interruption([], MOMENTS, origin=0.0)) is None


def test_a_way_that_never_recovers_is_down_from_its_last_success_to_its_last_call() -> None:
    calls = steady(0.0, 10.0) + steady(10.0, 20.0, error="25006 read-only")
    outcome = interruption(calls, MOMENTS, origin=0.0)
    assert outcome.longest_gap == pytest.approx(19.92 - 9.92, abs=1e-6)
    assert outcome.gap_started == pytest.approx(9.92, abs=1e-6)
