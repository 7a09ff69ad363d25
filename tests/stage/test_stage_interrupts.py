"""Ctrl+C and SIGTERM during the stage: Terraform is stopped gracefully and the stack destroyed.

The stage runs in a process of its own, as from a terminal or a CI runner, with a stand-in for
`terraform` (a script that records what it was asked and how it was stopped): no account, no
provider, no minutes of waiting for a database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from emulator.paths import REPO
from emulator.terraform.workspace import TerraformTools, TerraformWorkspace
from emulator.wait import wait_until

pytestmark = pytest.mark.integration

# A `terraform` that takes its time: it notes each command, and on SIGINT notes that it finished
# writing its state before exiting, as Terraform does.
FAKE_TERRAFORM = """#!/usr/bin/env bash
log="$(dirname "$0")/calls.log"
echo "$1 started" >> "$log"
trap 'echo "$1 interrupted, state written" >> "$log"; exit 1' INT
case "$1" in
  apply) for _ in $(seq 600); do sleep 0.1; done ;;
  output) echo '{"proxy_name": {"value": "twin-stage-000000-proxy"}}' ;;
esac
echo "$1 finished" >> "$log"
"""


@pytest.fixture
def fake_terraform(tmp_path: Path) -> TerraformTools:
    binary = tmp_path / "bin" / "terraform"
    binary.parent.mkdir()
    binary.write_text(FAKE_TERRAFORM)
    binary.chmod(0o755)
    return TerraformTools(str(binary), str(binary), (), "a stand-in", False)


def _calls(tools: TerraformTools) -> list[str]:
    log = Path(tools.terraform).parent / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


STAGE_SCRIPT = """
import sys
from pathlib import Path
from emulator.stage.run import TerraformDeployment, run_stage
from emulator.terraform.workspace import TerraformTools, TerraformWorkspace

binary, workdir = sys.argv[1], Path(sys.argv[2])
tools = TerraformTools(binary, binary, (), "a stand-in", False)
deployment = TerraformDeployment(TerraformWorkspace(tools, workdir, local=False))
print("stage started", flush=True)
sys.exit(run_stage(deployment, lambda outputs: 0, say=lambda line: print(line, flush=True)))
"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stage_stopped_during_the_apply_lets_terraform_write_its_state_then_destroys(
    fake_terraform: TerraformTools, tmp_path: Path, stop: signal.Signals
) -> None:
    script = textwrap.dedent(STAGE_SCRIPT)
    stage = subprocess.Popen(
        [sys.executable, "-c", script, fake_terraform.terraform, str(tmp_path / "work")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: "apply started" in _calls(fake_terraform), timeout=30, component="fake terraform")
        # A terminal's Ctrl+C goes to the whole foreground process group; a CI runner's SIGTERM too.
        os.killpg(stage.pid, stop)
        output, _ = stage.communicate(timeout=60)
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
    calls = _calls(fake_terraform)
    # Terraform ran in a session of its own: the group's signal did not reach it; the kit sent it
    # SIGINT itself and waited for it, then destroyed.
    assert calls.index("apply interrupted, state written") < calls.index("destroy started")
    assert "destroy finished" in calls
    assert stage.returncode == 130, output
    assert "Destroyed." in output


def test_terraform_stopped_by_ctrl_c_is_interrupted_gracefully_not_killed(
    fake_terraform: TerraformTools, tmp_path: Path
) -> None:
    workspace = TerraformWorkspace(fake_terraform, tmp_path / "work", local=False)
    started = time.monotonic()

    def interrupt_soon() -> None:
        wait_until(lambda: "apply started" in _calls(fake_terraform), timeout=30, component="fake terraform")
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_soon, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        workspace.apply()
    assert "apply interrupted, state written" in _calls(fake_terraform)
    assert time.monotonic() - started < 30
    # The interrupted command is in the workspace's log like any other.
    assert "apply -input=false" in (tmp_path / "work" / "terraform.log").read_text()
