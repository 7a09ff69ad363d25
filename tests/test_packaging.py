"""The kit as pip builds it: a wheel holds every subpackage, not only the top-level modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from emulator.paths import PACKAGE, REPO

pytestmark = pytest.mark.integration


def test_the_wheel_holds_every_subpackage_of_the_kit(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(str(init.parent.relative_to(PACKAGE.parent)) for init in PACKAGE.rglob("__init__.py"))
    assert len(packages) >= 8
    missing = [package for package in packages if f"{package}/__init__.py" not in names]
    assert not missing, f"not in the wheel: {missing}"
    modules = sorted(str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py"))
    assert not [module for module in modules if module not in names]
