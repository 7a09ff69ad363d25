"""What pyproject.toml cannot say: the example project ships inside the package, and the proxy's hot
modules can be compiled.

The repository keeps its example where people look for it (lambda/, terraform/, compose.yaml and
compose/ at the top), and a wheel carries a copy of them as package data under emulator/example/,
so an installed kit can run its demo and `up` from any directory (emulator/paths.py picks the copy
when there is no checkout around the package). An editable install reads the repository's files
directly, so nothing is copied then.

With LOCAL_TWIN_MYPYC=1 in the environment, the modules in COMPILED are compiled with mypyc (mypy
joins the build requirements): the proxy then runs about twice as fast per message. Without it, or
without a working C compiler (a warning says so), the package is pure Python (a py3-none-any wheel),
and behaves the same.
An editable install is never compiled: a compiled module beside its source would hide every edit.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext
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


# The RDS Proxy emulator's per-message path: the sans-I/O core and the glue every message crosses.
COMPILED = [
    "emulator/rdsproxy/protocol/messages.py",
    "emulator/rdsproxy/protocol/parameters.py",
    "emulator/rdsproxy/protocol/pinning.py",
    "emulator/rdsproxy/protocol/prepared.py",
    "emulator/rdsproxy/protocol/routing.py",
    "emulator/rdsproxy/protocol/server.py",
    "emulator/rdsproxy/protocol/statements.py",
    "emulator/rdsproxy/client.py",
    "emulator/rdsproxy/dbconn.py",
    "emulator/rdsproxy/lending.py",
    "emulator/rdsproxy/memorytls.py",
    "emulator/rdsproxy/pool.py",
    "emulator/rdsproxy/session.py",
    "emulator/rdsproxy/stats.py",
]
MYPYC_ENV = "LOCAL_TWIN_MYPYC"
COMPILE = os.environ.get(MYPYC_ENV, "") not in ("", "0")


def _warn(text: str) -> None:
    print(f"warning: {text}; the package is pure Python", file=sys.stderr)


class CompiledWhenAsked(Distribution):
    # build_ext runs only for a distribution with extension modules; they are made there, lazily
    # (mypyc type-checks and generates C when called: not for an sdist or a requirements query).
    # Once build_ext has compiled nothing, the distribution has none: install puts the modules in
    # purelib and the wheel is py3-none-any (WheelPureWhenNothingCompiled).
    nothing_compiled = False

    def has_ext_modules(self) -> bool:
        return COMPILE and not self.nothing_compiled


class BuildCompiled(build_ext):
    def finalize_options(self) -> None:
        if COMPILE and not self.distribution.ext_modules:
            self.distribution.ext_modules = self._compiled()
            if not self.distribution.ext_modules:
                self._fall_back()
        super().finalize_options()

    def _fall_back(self) -> None:
        distribution = self.distribution
        assert isinstance(distribution, CompiledWhenAsked)
        distribution.nothing_compiled = True

    def _compiled(self) -> list[Any]:
        commands = set(self.distribution.commands)
        if "editable_wheel" in commands or getattr(self, "editable_mode", False):
            _warn(f"{MYPYC_ENV} is ignored by an editable install")
            return []
        # Metadata and sdist steps ask build_ext for its sources too: only a build compiles.
        if not commands & {"build", "build_ext", "bdist_wheel", "install"}:
            return []
        try:
            from mypyc.build import mypycify  # noqa: PLC0415 - only a compiled build needs mypy
        except ImportError:
            _warn(f"{MYPYC_ENV} is set but mypyc (mypy) is not installed")
            return []
        try:
            return mypycify(
                [
                    f"--config-file={ROOT / 'pyproject.toml'}",
                    # An isolated build has only the build requirements: what the compiled modules
                    # import from the runtime dependencies is typed Any there (mypy --strict on the
                    # checkout is what checks the types).
                    "--ignore-missing-imports",
                    "--follow-imports=silent",
                    *COMPILED,
                ],
                opt_level="3",
                # The runtime library the compiled modules share goes inside the package.
                group_name="emulator.rdsproxy._compiled",
            )
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - mypy's errors exit
            _warn(f"mypyc could not compile the modules ({exc})")
            return []

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler, no headers, ...: pure Python instead
            # Half a build is worse than none: a module whose shared runtime is missing fails to import.
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self._fall_back()
            _warn(f"compiling with mypyc failed ({exc})")


class WheelPureWhenNothingCompiled(bdist_wheel):
    """bdist_wheel decides between a pure and a platform wheel before the build; whether mypyc
    compiled anything is known only after it. A build that fell back to pure Python makes a pure
    wheel (py3-none-any), which any platform can install, not one tagged for this one."""

    def run_command(self, command: str) -> None:
        super().run_command(command)
        if command == "build":
            self.root_is_pure = not self.distribution.has_ext_modules()


setup(
    distclass=CompiledWhenAsked,
    cmdclass={
        "build_py": BuildWithExample,
        "build_ext": BuildCompiled,
        "bdist_wheel": WheelPureWhenNothingCompiled,
    },
    # A compiled build needs mypy in its (isolated) build environment.
    setup_requires=["mypy>=1.11"] if COMPILE else [],
)
