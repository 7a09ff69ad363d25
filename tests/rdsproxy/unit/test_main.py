"""The proxy process's own set-up: its open-files limit (one descriptor per client connection)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

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
