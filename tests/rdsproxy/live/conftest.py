"""Fixtures for the RDS Proxy emulator: one stack per session, extra proxies per test, quiescence."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.rdsproxy import RdsProxyEmulator

from .helpers import ProxyUnderTest, wait_quiescent

# max_connections 30 leaves 27 slots for ordinary roles; the default emulator gets 5 of them.
STACK = StackConfig(max_connections=30, pool_size=5)


@pytest.fixture(scope="session")
def stack() -> Iterator[EmbeddedStack]:
    with EmbeddedStack(STACK) as running:
        yield running


@pytest.fixture(scope="session")
def proxy(stack: EmbeddedStack) -> ProxyUnderTest:
    """The stack's own emulator: IAM required, TLS required, as the kit's Terraform declares."""
    assert isinstance(stack.proxy, RdsProxyEmulator)
    return ProxyUnderTest(stack, stack.proxy)


_names = itertools.count(1)


@pytest.fixture(scope="module")
def _proxies(stack: EmbeddedStack) -> Iterator[dict[str, RdsProxyEmulator]]:
    # Per module: every extra proxy keeps idle database connections, and PostgreSQL has few slots.
    started: dict[str, RdsProxyEmulator] = {}
    yield started
    for emulator in started.values():
        emulator.stop()


@pytest.fixture
def make_proxy(stack: EmbeddedStack, _proxies: dict[str, RdsProxyEmulator]) -> Callable[..., ProxyUnderTest]:
    """Another emulator on the same database and secret, with other settings.

    Started once per distinct settings and shared by the tests that ask for the same ones; every one
    of them must be quiescent after each test.
    """

    def make(**settings: Any) -> ProxyUnderTest:
        settings = {"max_connections_percent": 10, **settings}
        key = json.dumps(settings, sort_keys=True)
        emulator = _proxies.get(key)
        if emulator is None:
            emulator = stack.make_emulator(settings, name=f"rdsproxy-{next(_names)}")
            emulator.start()
            _proxies[key] = emulator
        return ProxyUnderTest(stack, emulator)

    return make


@pytest.fixture(autouse=True)
def pool_is_quiescent_after_each_test(
    stack: EmbeddedStack, _proxies: dict[str, RdsProxyEmulator]
) -> Iterator[None]:
    yield
    for emulator in [stack.proxy, *_proxies.values()]:
        assert isinstance(emulator, RdsProxyEmulator)
        wait_quiescent(emulator)
