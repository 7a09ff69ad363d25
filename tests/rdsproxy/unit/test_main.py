"""The proxy process's own set-up: its open-files limit (one descriptor per client connection)."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys

import pytest

from emulator.rdsproxy.main import COMPILABLE, compiled_modules, how_it_runs, open_files_message


def _limits_after_raising(soft: int) -> tuple[int, int]:
    """raise_open_files_limit in a child started with a low soft limit (pytest's own stays as it is)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from emulator.rdsproxy.main import raise_open_files_limit;"
            " print(json.dumps(raise_open_files_limit()))",
        ],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    found = json.loads(done.stdout)
    return found[0], found[1]


def test_the_soft_open_files_limit_is_raised_to_the_hard_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft, hard_after = _limits_after_raising(256)
    assert hard_after == hard
    assert soft == (min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20)


def test_a_low_limit_is_reported_with_how_to_raise_it() -> None:
    text = open_files_message((1024, 1024))
    assert "room for about 924 client connections" in text
    assert "ulimit -Hn" in text


def test_a_high_limit_is_reported_without_advice() -> None:
    text = open_files_message((1 << 20, 1 << 20))
    assert "room for about 1048476 client connections" in text
    assert "ulimit" not in text


def test_the_proxy_says_whether_it_runs_compiled_and_is_never_half_compiled() -> None:
    """setup.py compiles its modules as one group (LOCAL_TWIN_MYPYC=1); LOCAL_TWIN_EXPECT_COMPILED=1
    (nox's compiled step) asks that this build be the compiled one."""
    compiled = compiled_modules()
    assert compiled in ([], list(COMPILABLE))
    assert how_it_runs() == ("compiled with mypyc" if compiled else "pure Python")
    if os.environ.get("LOCAL_TWIN_EXPECT_COMPILED") == "1":
        assert compiled == list(COMPILABLE)


def _proxy_alone(*settings: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "emulator", "proxy"]
    for setting in settings:
        argv += ["--set", setting]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("setting", "what"), [("listen_port", "endpoint default"), ("stats_port", "stats endpoint")]
)
def test_a_port_in_use_is_named_with_how_to_fix_it_not_a_traceback(setting: str, what: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # End-to-end IAM needs no secret, so the proxy gets as far as its ports.
        done = _proxy_alone("default_auth_scheme=IAM_AUTH", "listen_port=0", f"{setting}={port}")

    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: the {what} cannot listen on 127.0.0.1:{port}: "), done.stderr
    assert "how to fix: choose another port" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_proxy_without_its_secret_says_so() -> None:
    done = _proxy_alone("listen_port=0")

    assert done.returncode == 1
    assert done.stderr.startswith("error: secret_arn is not set\n  how to fix: set secret_arn"), done.stderr
    assert "Traceback" not in done.stderr
