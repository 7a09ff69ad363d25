"""The one thing pyproject.toml cannot say: the example project ships inside the package.

The repository keeps its example where people look for it (lambda/, terraform/, compose.yaml and
compose/ at the top), and a wheel carries a copy of them as package data under emulator/example/,
so an installed kit can run its demo and `up` from any directory (emulator/paths.py picks the copy
when there is no checkout around the package). An editable install reads the repository's files
directly, so nothing is copied then.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What the example is made of, relative to the repository, and the files of it that ship.
EXAMPLE = {
    "lambda": ["*.py", "*.txt"],
    "terraform": ["*.tf", "tests/*.tftest.hcl"],
    "compose": ["**/*.sh"],
    ".": ["compose.yaml"],
}


class BuildWithExample(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "emulator" / "example"
        for directory, patterns in EXAMPLE.items():
            for pattern in patterns:
                for source in sorted((ROOT / directory).glob(pattern)):
                    if "__pycache__" in source.parts or not source.is_file():
                        continue
                    destination = target / source.relative_to(ROOT)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, destination)


setup(cmdclass={"build_py": BuildWithExample})
