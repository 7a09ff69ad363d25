"""Shared fixtures: real stacks (embedded processes, or Docker Compose where an engine answers)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from dataclasses import replace

import psutil
import pytest

from emulator.stack.compose import ComposeStack, docker_engine_problem
from emulator.stack.embedded import EmbeddedStack, StackConfig, StackEnvironment
from emulator.stack.pgbouncer import find_pgbouncer
from emulator.stack.process import STARTED, ManagedProcess
from emulator.stack.proxies import ProxyKind
from emulator.terraform.workspace import TerraformTools, TerraformUnavailable, find_terraform
from emulator.wait import wait_until

# pytest's own fixture for testing plugins (tests/pytest_plugin: the kit's plugin, in pytest runs of its own).
pytest_plugins = ["pytester"]

# Small numbers keep the exhaustion quick and certain: 20 slots, 3 reserved for superusers.
TEST_STACK = StackConfig(max_connections=20, pool_size=5)


# Every process this test session starts inherits this mark, so that the session counts its own
# servers only (other test sessions may run beside it).
SESSION_MARK = "LOCAL_TWIN_TEST_SESSION"
os.environ[SESSION_MARK] = uuid.uuid4().hex


# Where each server's log stood when a test began: a failed test shows what they wrote since.
_LOG_OFFSETS = pytest.StashKey[dict[ManagedProcess, int]]()
_LOG_LINES = 40


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_LOG_OFFSETS] = {process: process.log_size() for process in STARTED}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test that failed (or whose teardown did) shows the end of what each server (the proxy,
    PostgreSQL, ...) logged since it began, stopped since or not, as pytest shows captured output:
    a rare failure in CI then says what the proxy saw."""
    report = yield
    if report.failed:
        offsets = item.stash.get(_LOG_OFFSETS, {})
        for process in list(STARTED):
            lines = process.log_from(offsets.get(process, 0)).splitlines()[-_LOG_LINES:]
            if lines:
                title = f"Captured log of {process.component} (last {len(lines)} lines, {process.log_path})"
                report.sections.append((title, "\n".join(lines)))
    return report


def _stack_processes() -> set[int]:
    """This session's processes whose command line names a stack directory (every server the kit
    starts does)."""
    found = set()
    for process in psutil.process_iter(["cmdline", "environ"]):
        info = process.info
        cmdline = " ".join(info.get("cmdline") or ())
        environ = info.get("environ") or {}
        if "/local-twin-" in cmdline and environ.get(SESSION_MARK) == os.environ[SESSION_MARK]:
            found.add(process.pid)
    return found


@pytest.fixture(scope="session", autouse=True)
def no_orphan_processes() -> Iterator[None]:
    """Whatever the tests start, they stop: no server may outlive the test session."""
    before = _stack_processes()
    yield
    wait_until(
        lambda: not (_stack_processes() - before), component="servers started by the tests", timeout=30
    )


def _docker_reason() -> str | None:
    return docker_engine_problem()


@pytest.fixture(
    scope="session",
    params=[
        "emulator",
        pytest.param("pgbouncer", marks=pytest.mark.pgbouncer),
        pytest.param("docker", marks=pytest.mark.docker),
    ],
)
def pooled_stack(request: pytest.FixtureRequest) -> Iterator[StackEnvironment]:
    """PostgreSQL + moto + a pooler: the RDS Proxy emulator or PgBouncer as local processes, and
    PgBouncer from compose.yaml when a Docker engine answers."""
    if request.param == "docker":
        reason = _docker_reason()
        if reason is not None:
            pytest.skip(f"Docker Compose stack: {reason}")
        with ComposeStack(TEST_STACK) as compose:
            yield compose
        return
    kind = ProxyKind(request.param)
    if kind is ProxyKind.PGBOUNCER and find_pgbouncer() is None:
        pytest.skip("no pgbouncer binary (apt-get install pgbouncer); .ci/run installs it")
    with EmbeddedStack(replace(TEST_STACK, proxy=kind)) as stack:
        yield stack


@pytest.fixture(scope="session")
def embedded_stack() -> Iterator[EmbeddedStack]:
    """The embedded stack with no proxy, for tests about the stack's own processes and files."""
    with EmbeddedStack(StackConfig(proxy=ProxyKind.DIRECT, max_connections=20)) as stack:
        yield stack


@pytest.fixture
def restore_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def terraform_tools() -> TerraformTools:
    try:
        tools = find_terraform()
    except TerraformUnavailable as exc:
        pytest.skip(f"Terraform stage: {exc}")
    if tools.needs_registry:
        # Without a local provider source the registry would be needed, and these machines have none.
        pytest.skip(
            "Terraform stage: no local source of the hashicorp/aws provider (set TF_PLUGIN_DIR to a "
            "filesystem mirror, or configure provider_installation in your CLI configuration)"
        )
    return tools
