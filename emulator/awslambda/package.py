"""The Lambda deployment package: the handler plus psycopg2 built for the Lambda runtime.

The kit builds the zip itself (pip with --platform, no Docker, no Terraform archive provider) and
hands its path to Terraform as `lambda_package`. The zip is reproducible (sorted entries, fixed
times), so Terraform's source_code_hash only changes when the code or a dependency does.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from emulator.errors import ComponentError
from emulator.paths import LAMBDA_DIR

# The drivers the twin gives every handler (its environments load them before Init) and Lambda's
# Python runtime does not: a package must bring its own, and the twin cannot tell when it does not.
KIT_DRIVERS = ("psycopg", "psycopg2")

# The runtime terraform/lambda.tf declares (lambda_runtime) and its architecture.
RUNTIME_PYTHON = "3.12"
# The Lambda runtime the kit's interpreter is: every handler runs on it, whatever its function declares.
KIT_RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
RUNTIME_PLATFORM = "manylinux2014_x86_64"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def build_package(
    out: Path,
    *,
    source: Path = LAMBDA_DIR,
    with_dependencies: bool = True,
    extra_requirements: Sequence[Path] = (),
    python_version: str = RUNTIME_PYTHON,
    platform: str = RUNTIME_PLATFORM,
) -> Path:
    """Write the deployment zip to `out` and return it.

    with_dependencies=False packages the handler alone: enough for the local twin, which runs the
    handler itself with the kit's own psycopg2 and never executes the uploaded code.
    extra_requirements: more requirements files (the stage adds lambda/probe-requirements.txt).
    """
    with tempfile.TemporaryDirectory(prefix="lambda-package-") as staging:
        root = Path(staging)
        if with_dependencies:
            for requirements in (source / "requirements.txt", *extra_requirements):
                if requirements.is_file():
                    _install_dependencies(requirements, root, python_version, platform)
        files = {path.relative_to(root): path for path in root.rglob("*") if path.is_file()}
        # The whole code directory, its packages and data files too, as Lambda's task root holds it.
        files.update(
            {
                path.relative_to(source): path
                for path in source.rglob("*")
                if path.is_file() and not any(part.startswith(".") for part in path.relative_to(source).parts)
            }
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(files, key=str):
                if "__pycache__" in name.parts or name.suffix == ".pyc":
                    continue
                info = zipfile.ZipInfo(str(name), date_time=_FIXED_TIME)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, files[name].read_bytes())
    return out


def _install_dependencies(requirements: Path, target: Path, python_version: str, platform: str) -> None:
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-compile", "--target", str(target), "--platform", platform, "--implementation", "cp",
        "--python-version", python_version, "--only-binary=:all:", "-r", str(requirements),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ComponentError(
            "Lambda package",
            f"pip could not fetch the handler's dependencies for {platform} / Python {python_version}:\n"
            f"{result.stderr.strip()[-2000:]}",
            "pip needs to reach PyPI (or your index) for manylinux wheels of lambda/requirements.txt",
        )


def foreign_extensions(code_dir: Path) -> list[str]:
    """Compiled modules in a code directory built for another Python than the running one
    (a package built for the Lambda runtime, say), which cannot be imported here."""
    own = f"cpython-{sys.version_info.major}{sys.version_info.minor}-"
    return sorted(
        str(path.relative_to(code_dir)) for path in code_dir.rglob("*.cpython-*.so") if own not in path.name
    )


def drivers_left_out(package: Path, source: Path) -> list[str]:
    """The kit's drivers (KIT_DRIVERS) the code in source imports and the zip does not hold: on the
    twin such a package runs, on Lambda its import fails (Runtime.ImportModuleError)."""
    with zipfile.ZipFile(package) as archive:
        packaged = {Path(name).parts[0].split(".")[0] for name in archive.namelist()}
    return [driver for driver in KIT_DRIVERS if driver in _imported(source) and driver not in packaged]


def _imported(source: Path) -> set[str]:
    """The top-level modules the code directory's Python files import (absolute imports)."""
    names: set[str] = set()
    for path in source.rglob("*.py"):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            continue  # not the kit's to judge here: the function's Init reports it
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names
