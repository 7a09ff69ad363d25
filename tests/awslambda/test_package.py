"""The deployment package: what it holds, and what it leaves out that only the twin supplies."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from emulator.awslambda.package import build_package, drivers_left_out

pytestmark = pytest.mark.unit


def _code(tmp_path: Path, source: str) -> Path:
    code = tmp_path / "function"
    code.mkdir()
    (code / "app.py").write_text(source)
    return code


def test_a_handler_only_package_is_the_code_directory_and_nothing_else(tmp_path: Path) -> None:
    code = _code(tmp_path, "def handler(event, context):\n    return 1\n")
    (code / "data").mkdir()
    (code / "data" / "rows.json").write_text("[]")
    (code / ".hidden").write_text("x")
    package = build_package(tmp_path / "app.zip", source=code, with_dependencies=False)
    assert zipfile.ZipFile(package).namelist() == ["app.py", "data/rows.json"]


@pytest.mark.parametrize(
    ("source", "left_out"),
    [
        ("import psycopg\n", ["psycopg"]),
        ("import psycopg2.extras\n", ["psycopg2"]),
        ("from psycopg import sql\nfrom psycopg2 import pool\n", ["psycopg", "psycopg2"]),
        ("def handler(event, context):\n    import psycopg2\n", ["psycopg2"]),  # imported lazily
        ("import boto3\nimport json\n", []),  # Lambda's runtime has boto3
        ("from . import psycopg\n", []),  # a module of the code's own
        ("import psycopg(\n", []),  # not Python: Init reports it, not the package
    ],
)
def test_a_driver_the_code_imports_and_the_package_lacks_is_named(
    tmp_path: Path, source: str, left_out: list[str]
) -> None:
    code = _code(tmp_path, source)
    package = build_package(tmp_path / "app.zip", source=code, with_dependencies=False)
    assert drivers_left_out(package, code) == left_out


def test_a_driver_the_package_holds_is_not_named(tmp_path: Path) -> None:
    code = _code(tmp_path, "import psycopg2\n")
    (code / "psycopg2").mkdir()  # as pip --target lays it out
    (code / "psycopg2" / "__init__.py").write_text("")
    package = build_package(tmp_path / "app.zip", source=code, with_dependencies=False)
    assert drivers_left_out(package, code) == []
