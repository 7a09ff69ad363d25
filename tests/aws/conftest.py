"""The stage's targets: every scenario runs on the local twin, and on AWS under `nox -s aws`.

The AWS parameter carries the `aws` marker, so `nox -s local` (-m "not aws") runs the local one
only. `nox -s aws` deploys the stack and hands its Terraform outputs over in
LOCAL_TWIN_STAGE_OUTPUTS; each target's figures go to LOCAL_TWIN_STAGE_RESULTS/<target>.json, which
the stage sets side by side in its comparison report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.stage.local import local_target
from emulator.stage.target import OUTPUTS_ENV, RESULTS_ENV, StageTarget, aws_target

TARGETS = ["local", pytest.param("aws", marks=pytest.mark.aws)]


@pytest.fixture(scope="session")
def local() -> Iterator[StageTarget]:
    with local_target() as target:
        yield target
        _write_figures(target)


@pytest.fixture(scope="session")
def deployed() -> Iterator[StageTarget]:
    outputs_file = os.environ.get(OUTPUTS_ENV)
    if not outputs_file:
        pytest.skip(f"the AWS target runs under `nox -s aws`, which deploys the stack and sets {OUTPUTS_ENV}")
    target = aws_target(json.loads(Path(outputs_file).read_text()))
    yield target
    _write_figures(target)


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> StageTarget:
    name = "deployed" if request.param == "aws" else "local"
    found: StageTarget = request.getfixturevalue(name)
    return found


def _write_figures(target: StageTarget) -> None:
    results = os.environ.get(RESULTS_ENV)
    if results and target.figures:
        path = Path(results) / f"{target.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(target.figures, indent=2, sort_keys=True, default=str))
