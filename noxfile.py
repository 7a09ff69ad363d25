"""Sessions: `nox -s local` (everything offline, the default), `nox -s lint`, and `nox -s aws`."""

from __future__ import annotations

import nox

nox.options.sessions = ["local"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

# A user's project with its own test suite on the kit's pytest plugin (its pyproject.toml).
EXAMPLE_PROJECT = "examples/orders-service"


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
