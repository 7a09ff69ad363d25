"""`twin_failover`: a project's test fails its twin's database over, and the next test finds the
cluster whole again (the old writer back as a reader)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

PYPROJECT = """
[tool.pytest.ini_options]
twin_cluster = "aurora"
twin_dns_ttl = "0"
"""

SUITE = """
def test_a_failover_moves_the_writer(twin, twin_failover):
    before = twin.topology()["writer"]
    report = twin_failover()
    assert report.old_writer == before
    assert twin.topology()["writer"] == report.new_writer != before
    assert report.total_seconds > 0


def test_the_next_test_finds_the_old_writer_back_as_a_reader(twin):
    roles = sorted(instance["role"] for instance in twin.topology()["instances"])
    assert roles == ["reader", "writer"]


def test_a_failover_to_the_writer_is_refused(twin, twin_failover):
    import pytest
    from emulator.errors import ComponentError

    with pytest.raises(ComponentError, match="it is the cluster's writer"):
        twin_failover(to=twin.topology()["writer"])
"""


def test_a_test_fails_the_twin_over_and_the_next_finds_the_cluster_whole(pytester: pytest.Pytester) -> None:
    (pytester.path / "pyproject.toml").write_text(PYPROJECT)
    (pytester.path / "test_failover.py").write_text(SUITE)
    # Named, so the run does not depend on the installed entry point (an older install lacks it).
    result = pytester.runpytest_subprocess(
        "-p", "emulator.pytest_plugin", "-p", "no:cacheprovider", "-v", timeout=300
    )
    result.assert_outcomes(passed=3)
