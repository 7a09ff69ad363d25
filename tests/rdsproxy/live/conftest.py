"""Fixtures for the RDS Proxy emulator: one stack per session, extra proxies per test, quiescence."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.rdsproxy import RdsProxyEmulator, emulator_config

from .helpers import ProxyUnderTest

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
    for part in started.values():
        part.stop()


@pytest.fixture
def make_proxy(stack: EmbeddedStack, _proxies: dict[str, RdsProxyEmulator]) -> Callable[..., ProxyUnderTest]:
    """Another emulator on the same database and secret, with other settings.

    Started once per distinct settings and shared by the tests that ask for the same ones; every one
    of them must be quiescent after each test.
    """

    def make(**settings: Any) -> ProxyUnderTest:
        settings = {"max_connections_percent": 10, **settings}
        key = json.dumps(settings, sort_keys=True)
        part = _proxies.get(key)
        if part is None:
            name = f"rdsproxy-{next(_names)}"
            certificate = stack.ca.issue_server(name, ["localhost", "127.0.0.1"])
            config = emulator_config(
                target_host=stack.postgres.host,
                target_port=stack.postgres.port,
                secret_arn=stack.secret_arn,
                aws_endpoint_url=stack.aws.endpoint_url,
                region=stack.config.region,
                tls_cert_file=str(certificate.cert_path),
                tls_key_file=str(certificate.key_path),
                settings=settings,
            )
            part = RdsProxyEmulator(stack.workdir, config, environment=stack.aws.environment())
            part.workdir = stack.workdir / name
            part.start()
            _proxies[key] = part
        return ProxyUnderTest(stack, part)

    return make


def wait_quiescent(proxy: RdsProxyEmulator, timeout: float = 10) -> dict[str, Any]:
    """Nothing borrowed, nothing in a transaction, no client left, the pool within its cap."""
    deadline = time.monotonic() + timeout
    while True:
        stats = proxy.stats()
        pool = stats["pool"]
        quiet = (
            pool["borrowed"] == 0
            and stats["database_connections_in_transaction"] == 0
            and stats["client_connections"] == 0
            and stats["database_connections_pinned"] == 0
            and stats["borrow_waiters"] == 0
            and pool["total"] <= pool["cap"]
            and pool["total"] == pool["idle"]
        )
        if quiet:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"the proxy is not quiescent: {stats}")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def pool_is_quiescent_after_each_test(
    stack: EmbeddedStack, _proxies: dict[str, RdsProxyEmulator]
) -> Iterator[None]:
    yield
    for part in [stack.proxy, *_proxies.values()]:
        assert isinstance(part, RdsProxyEmulator)
        wait_quiescent(part)
