"""Which files check-sql reads: the project's own, as git sees them, never its virtual environments."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from emulator.tools.sqlcheck.walk import MissingPath, files_to_check

pytestmark = pytest.mark.unit


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _names(root: Path, files: list[Path]) -> list[str]:
    return [file.relative_to(root).as_posix() for file in files]


PROJECT = {
    "app/handler.py": "",
    "app/schema.sql": "",
    "app/notes.txt": "",
    # A virtual environment nobody put in .gitignore, under a name no list knows.
    "env-3.11/pyvenv.cfg": "home = /usr/bin\n",
    "env-3.11/lib/python3.11/site-packages/lib.py": "",
    "env-3.11/bin/tool.py": "",
    "vendor/site-packages/lib.py": "",
    "web/node_modules/pkg/x.py": "",
    "build/lib/app/handler.py": "",
    ".tox/py311/x.py": "",
    "infra/.terraform/modules/x.py": "",
    "app/__pycache__/x.py": "",
    # What .gitignore leaves out, and what a deeper one takes back.
    ".gitignore": "generated/\n*.local.py\n",
    "generated/out.py": "",
    "app/settings.local.py": "",
    "app/.gitignore": "!keep.local.py\n",
    "app/keep.local.py": "",
}


def test_outside_git_the_gitignore_files_are_read_and_environments_skipped(tmp_path: Path) -> None:
    root = _tree(tmp_path / "project", PROJECT)
    assert _names(root, files_to_check([root])) == ["app/handler.py", "app/keep.local.py", "app/schema.sql"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_in_a_git_work_tree_git_decides_and_environments_are_skipped_still(tmp_path: Path) -> None:
    root = _tree(tmp_path / "project", {**PROJECT, "app/gone.py": "", "app/new.py": ""})
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".git/info/exclude").write_text("*.excluded.py\n")
    (root / "app/by-info-exclude.excluded.py").write_text("")
    subprocess.run(["git", "-C", str(root), "add", "app/handler.py", "app/gone.py", "build"], check=True)
    (root / "app/gone.py").unlink()  # still in the index, no longer in the work tree
    # Tracked or not, a build/ directory is skipped; an untracked new file is checked.
    assert _names(root, files_to_check([root])) == [
        "app/handler.py",
        "app/keep.local.py",
        "app/new.py",
        "app/schema.sql",
    ]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_directory_git_ignores_is_checked_when_named(tmp_path: Path) -> None:
    root = _tree(tmp_path / "project", PROJECT)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    assert _names(root, files_to_check([root / "generated"])) == ["generated/out.py"]


def test_a_skipped_directory_is_checked_when_named_but_not_what_it_holds_that_is_skipped(
    tmp_path: Path,
) -> None:
    root = _tree(tmp_path / "project", PROJECT)
    assert _names(root, files_to_check([root / "vendor/site-packages"])) == ["vendor/site-packages/lib.py"]
    # Its lib/python3.11/site-packages stays skipped.
    assert _names(root, files_to_check([root / "env-3.11"])) == ["env-3.11/bin/tool.py"]


def test_a_file_named_on_the_command_line_is_always_checked(tmp_path: Path) -> None:
    root = _tree(tmp_path / "project", PROJECT)
    named = [root / "generated/out.py", root / "app/notes.txt"]
    assert files_to_check(named, exclude=["*.py"]) == named


def test_exclude_patterns_are_gitignore_patterns_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(
        tmp_path / "project", {"a/migrations/1.sql": "", "a/x_pb2.py": "", "a/y.py": "", "b/y.py": ""}
    )
    monkeypatch.chdir(root)
    assert files_to_check([Path()], exclude=["migrations/", "*_pb2.py", "/b"]) == [Path("a/y.py")]
    # Anchored patterns are relative to the current directory, not to the directory named.
    assert files_to_check([Path("a")], exclude=["/a/y.py"]) == [
        Path("a/migrations/1.sql"),
        Path("a/x_pb2.py"),
    ]


def test_each_file_is_checked_once_however_often_it_is_named(tmp_path: Path) -> None:
    root = _tree(tmp_path / "project", {"app/a.py": "", "app/b.py": ""})
    assert _names(root, files_to_check([root / "app", root, root / "app/a.py"])) == ["app/a.py", "app/b.py"]


def test_a_path_that_does_not_exist_is_an_error_not_an_empty_check(tmp_path: Path) -> None:
    (tmp_path / "there.py").write_text("")
    with pytest.raises(MissingPath, match=r"typo\.py: no such file or directory"):
        files_to_check([tmp_path / "there.py", tmp_path / "typo.py"])
