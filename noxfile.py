"""Sessions: `nox -s local` (everything offline, the default), `nox -s compiled`, `nox -s lint`, and
`nox -s aws`."""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.sessions = ["local"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

# A user's project with its own test suite on the kit's pytest plugin (its pyproject.toml).
EXAMPLE_PROJECT = "examples/orders-service"
ROOT = Path(__file__).resolve().parent
# What the proxy compiled with mypyc (setup.py, LOCAL_TWIN_MYPYC=1) must pass: its unit tests, the
# harnesses that compare its bytes with PostgreSQL's and keep clients apart, and its logins (TLS,
# IAM, every driver, hand-made protocol edge cases: a compiled build checks types at run time that
# the pure one never does). The whole suite runs on the pure-Python build; twice would not fit CI.
COMPILED_TESTS = [
    "tests/rdsproxy/unit",
    "tests/rdsproxy/live/test_protocol_differential.py",
    "tests/rdsproxy/live/test_differential.py",
    "tests/rdsproxy/live/test_isolation.py",
    "tests/rdsproxy/live/test_auth.py",
    "tests/rdsproxy/live/test_drivers.py",
    "tests/rdsproxy/live/test_protocol.py",
]


@nox.session(python="3.11")
def local(session: nox.Session) -> None:
    """The whole offline stage: the kit's tests (unit tests, then the stack tests on real local
    processes), then the example project's own suite as its authors run it: pytest in
    examples/orders-service, with its configuration, on the kit's plugin.

    Docker-only tests skip with their reason when no engine answers; pytest's exit code 5 (no test
    ran) fails the session like any other non-zero code. Arguments go to the kit's pytest, and then
    only the tests they name run: `nox -s local -- tests/twin`.
    """
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not aws", *session.posargs)
    if not session.posargs:
        session.chdir(EXAMPLE_PROJECT)
        session.run("pytest")
        _test_compiled(session)


@nox.session(python="3.11")
def compiled(session: nox.Session) -> None:
    """The proxy compiled with mypyc, on COMPILED_TESTS (the last step of `local`). Arguments go to
    pytest instead of COMPILED_TESTS."""
    session.install("-e", ".[test]")
    _test_compiled(session, *session.posargs)


def _test_compiled(session: nox.Session, *pytest_args: str) -> None:
    """Compiled in place in a copy of the checkout, never in the checkout itself: a compiled module
    beside its source would hide every later edit of it."""
    session.install("mypy>=1.11", "setuptools>=77")
    # create_tmp() is relative to the checkout (local has moved to the example project), and the copy
    # must be named absolutely: PYTHONPATH names it from the copy and from the proxies' directories.
    session.chdir(ROOT)
    copy = Path(session.create_tmp()).resolve() / "compiled"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".git", ".nox", "build", "*.so", "__pycache__", ".terraform", "*.egg-info"
        ),
    )
    session.chdir(copy)
    session.run("python", "setup.py", "--quiet", "build_ext", "--inplace", env={"LOCAL_TWIN_MYPYC": "1"})
    # The copy comes first on sys.path, before the editable install's finder, in pytest and in the
    # proxy processes it starts; the unit tests check that what runs is the compiled build.
    env = {"PYTHONPATH": str(copy), "LOCAL_TWIN_EXPECT_COMPILED": "1"}
    session.run("pytest", "-p", "no:cacheprovider", *(pytest_args or COMPILED_TESTS), env=env)


@nox.session(python="3.11")
def aws(session: nox.Session) -> None:
    """The real-AWS stage, never a default: it deploys terraform/ into the account of the environment's
    credentials, runs tests/aws there and on the local twin, compares, and always destroys.

    It refuses to start without credentials and an explicit yes:
    nox -s aws -- --yes-create-billable-resources [-- pytest arguments]
    """
    session.install("-e", ".[test]")
    session.run("python", "-m", "emulator", "stage", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and mypy --strict on the kit's package."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
