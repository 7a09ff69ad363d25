"""The pytest plugin (entry point `emulator.pytest_plugin`): your test suite against the local twin.

    [tool.pytest.ini_options]
    twin_handler = "orders.handler"
    twin_code = "function"
    twin_init_sql = "schema"

Fixtures: `twin` (session-scoped: a LocalTwin started from the options above, at the first test
that asks for it), `twin_within_cap` (the test fails when the database served more connections than
the proxy's cap), `twin_failover` (fails the twin's database over in a test: `twin_cluster =
"aurora"`), and `twin_fixture(...)` to make differently configured twins. Every test that uses
a twin fails when RDS Proxy pinned a session during it, with the reason and the statement digest,
unless it is marked `@pytest.mark.twin_allow_pin(...)` (or `twin_allow_pins = true` for the suite).
The functions' and the proxy's logs of each test are shown with its failure.

The plugin starts nothing, and imports nothing heavy, until a test asks for a twin.

    options    the ini keys and command-line options (twin_handler / --twin-handler, ...)
    factory    twin_fixture and the life of a plugin's twin (Ctrl+C, SIGTERM, SIGHUP, failures)
    windows    each test's window on its twins: logs, pins, connection peaks, recycling
    verdicts   what fails a test (an undeclared pin, connections over the cap), in words
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from emulator.pytest_plugin.factory import twin_fixture
from emulator.pytest_plugin.options import add_options
from emulator.pytest_plugin.verdicts import ALLOW_PIN_HELP
from emulator.pytest_plugin.windows import TWINS, Phase, Twins

if TYPE_CHECKING:
    from emulator.stack.cluster import FailoverReport
    from emulator.twin.local import LocalTwin

__all__ = ["twin_fixture"]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", ALLOW_PIN_HELP)
    config.stash[TWINS] = Twins(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session is over (its twins stopped with their fixtures, on failures and Ctrl+C alike):
    the Lambda environments' zygote goes too, so that nothing outlives pytest."""
    twins = config.stash.get(TWINS, None)
    if twins is not None and twins.ever_started:
        from emulator.awslambda.function import stop_zygote  # noqa: PLC0415 - only after a twin ran

        stop_zygote()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    twins = item.config.stash[TWINS]
    twins.begin(item)
    yield from _phase(twins, item, "setup")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield from _phase(item.config.stash[TWINS], item, "call")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield from _phase(item.config.stash[TWINS], item, "teardown")


def _phase(twins: Twins, item: pytest.Item, phase: Phase) -> Generator[None, None, None]:
    try:
        result = yield
    except (KeyboardInterrupt, SystemExit):
        raise  # the session ends; the twins' fixtures stop them
    except BaseException:
        twins.phase_ended(item, phase, passed=False)
        raise
    twins.phase_ended(item, phase, passed=True)
    return result


# The twin the ini file and the command line describe, shared by the whole session.
twin = twin_fixture()


@pytest.fixture
def twin_within_cap() -> None:
    """The test fails when, during it, the database served more connections of the application's role
    than the proxy's cap (MaxDatabaseConnectionsAllowed), counted by the proxy and in pg_stat_activity.

    The plugin measures it for the tests that use this fixture: nothing to do here."""


@pytest.fixture
def twin_failover(twin: LocalTwin) -> Iterator[Callable[..., FailoverReport]]:
    """Fail the `twin`'s database over during a test: `report = twin_failover()` (or
    `twin_failover(to="NAME")`), with the twin started as a cluster (twin_cluster = "aurora" or
    "multi-az"). The report names the new writer and each step's time. When the test ends, the
    old writer has rejoined as a replica, so the next test finds the whole cluster (with the new
    writer)."""
    yield twin.failover
    twin.wait_rejoined()
