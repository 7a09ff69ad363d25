"""The proxy's counters: exact latency totals with bounded memory however long it runs, and peaks
that can start again (a test's own window)."""

from __future__ import annotations

import pytest

from emulator.rdsproxy.stats import RECENT_SAMPLES, Latencies, Stats

pytestmark = pytest.mark.unit


def test_count_sum_and_max_cover_every_sample_while_memory_stays_bounded() -> None:
    latencies = Latencies()
    for us in range(RECENT_SAMPLES + 10_000):
        latencies.add(us)
    assert latencies.count == RECENT_SAMPLES + 10_000
    assert latencies.total_us == sum(range(RECENT_SAMPLES + 10_000))
    assert latencies.max_us == RECENT_SAMPLES + 9_999
    assert sorted(latencies.recent) == list(range(10_000, RECENT_SAMPLES + 10_000))  # the newest


def test_percentiles_are_over_the_most_recent_samples() -> None:
    latencies = Latencies()
    for _ in range(RECENT_SAMPLES):
        latencies.add(1_000_000)  # an old slow period, pushed out by what follows
    for _ in range(RECENT_SAMPLES):
        latencies.add(7)
    assert latencies.summary() == {"count": 2 * RECENT_SAMPLES, "p50": 7, "p99": 7, "max": 1_000_000}


def test_the_stats_snapshot_summarises_latencies_instead_of_copying_them() -> None:
    stats = Stats()
    for us in (10, 20, 30):
        stats.borrow_latency.add(us)
    snapshot = stats.snapshot()
    assert snapshot["borrow_latency_us"] == {"count": 3, "p50": 20, "p99": 30, "max": 30}
    assert snapshot["query_response_latency"]["count"] == 0


def test_resetting_the_peaks_starts_them_again_from_the_current_values() -> None:
    stats = Stats()
    for _ in range(3):
        stats.client_opened(tls=True)
    stats.database_connections = 2
    stats.pin_started()
    stats.client_closed(tls=True)
    stats.pin_ended()
    assert _peaks(stats) == (3, 2, 1)
    stats.reset_peaks()
    assert _peaks(stats) == (2, 2, 0)
    stats.client_opened(tls=False)
    assert stats.peak_client_connections == 3


def _peaks(stats: Stats) -> tuple[int, int, int]:
    """Peak client connections, database connections and pinned sessions."""
    return (stats.peak_client_connections, stats.peak_database_connections, stats.peak_pinned_sessions)


def test_the_whole_proxys_counters_are_the_sum_of_its_endpoints_and_pools() -> None:
    default, reads, reader_pool = Stats(), Stats(), Stats()
    default.client_connections, reads.client_connections = 2, 3
    reader_pool.database_connections = 4
    default.borrow_latency.add(10)
    reads.borrow_latency.add(30)
    whole = Stats.total([default, reads, reader_pool])
    assert (whole.client_connections, whole.database_connections) == (5, 4)
    assert (whole.borrow_latency.count, whole.borrow_latency.total_us, whole.borrow_latency.max_us) == (
        2,
        40,
        30,
    )
    assert Stats.total([default]) is default  # one part: the same object, as before endpoints


def test_merged_latencies_count_every_sample_and_keep_one_ring_of_recent_ones() -> None:
    old, new = Latencies(), Latencies()
    for _ in range(RECENT_SAMPLES):
        old.add(1_000_000)
    for us in range(1, 11):
        new.add(us)
    merged = Latencies.merged([old, new])
    assert (merged.count, merged.total_us, merged.max_us) == (
        RECENT_SAMPLES + 10,
        10**6 * RECENT_SAMPLES + 55,
        10**6,
    )
    assert len(merged.recent) == RECENT_SAMPLES
    assert sorted(merged.recent)[:10] == list(range(1, 11))  # the last part's samples are all kept
