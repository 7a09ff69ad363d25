"""Which files check-sql reads: the .py and .sql files under the paths it is given, as a CI gate
needs them (the project's own code, not its virtual environments or what git ignores).

- A file named on the command line is always checked (a .sql file as SQL, any other as Python).
- A directory is listed by git where it is in a work tree (`git ls-files --cached --others
  --exclude-standard`: tracked and new files, without what .gitignore, .git/info/exclude and the
  global excludes leave out); elsewhere its .gitignore files are read with pathspec, as git would.
  A directory named on the command line that git ignores is listed whole.
- Below a named directory, directories in SKIPPED_DIRECTORIES and virtual environments (a
  pyvenv.cfg or conda-meta inside) are skipped, whatever git says: an untracked .venv that nobody
  put in .gitignore holds thousands of files of SQL that is not yours.
- --exclude patterns are gitignore patterns matched against the path relative to the current
  directory (a file outside it: relative to the directory named), and skip files and directories
  below the named ones.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from pathspec import GitIgnoreSpec

SUFFIXES = (".py", ".sql")

# ruff's default exclusions (what Python users already expect), with what Lambda and Terraform
# tooling leaves behind: copies of the code and its dependencies.
SKIPPED_DIRECTORIES = frozenset(
    {
        ".bzr",
        ".direnv",
        ".eggs",
        ".git",
        ".hg",
        ".mypy_cache",
        ".nox",
        ".pytest_cache",
        ".ruff_cache",
        ".svn",
        ".tox",
        ".venv",
        "__pycache__",
        "__pypackages__",
        "_build",
        "build",
        "dist",
        "node_modules",
        "site-packages",
        "venv",
        ".terraform",
        ".aws-sam",
        ".serverless",
        "cdk.out",
    }
)
# What a directory holding a Python environment contains (venv and virtualenv; conda).
_ENVIRONMENT_MARKERS = ("pyvenv.cfg", "conda-meta")


class MissingPath(Exception):
    """A path named on the command line does not exist."""


def _skipped(directory: Path) -> bool:
    return directory.name in SKIPPED_DIRECTORIES or any(
        (directory / marker).exists() for marker in _ENVIRONMENT_MARKERS
    )


def files_to_check(paths: Sequence[Path], exclude: Sequence[str] = ()) -> list[Path]:
    """The files to check, each once, in the order of the paths and by name within a directory."""
    missing = [path for path in paths if not path.exists()]
    if missing:
        raise MissingPath(", ".join(f"{path}: no such file or directory" for path in missing))
    excluded = GitIgnoreSpec.from_lines(exclude)
    seen: set[Path] = set()
    files = []
    for path in paths:
        found = [path] if not path.is_dir() else sorted(_directory_files(path, excluded))
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files


def _directory_files(root: Path, excluded: GitIgnoreSpec) -> Iterator[Path]:
    listed = _git_files(root)
    candidates = _walk(root) if listed is None else _kept(root, listed)
    for file in candidates:
        if file.suffix in SUFFIXES and not _excluded(excluded, root, file):
            yield file


def _git_files(root: Path) -> list[Path] | None:
    """What git lists under the directory, or None outside a work tree (or without git)."""
    try:
        ignored = subprocess.run(
            ["git", "-C", str(root), "check-ignore", "-q", "."], capture_output=True, check=False
        )
        command = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others"]
        if ignored.returncode != 0:  # a directory git ignores was named on purpose: list it whole
            command.append("--exclude-standard")
        listing = subprocess.run(command, capture_output=True, check=False)
    except OSError:  # no git
        return None
    if listing.returncode != 0:  # not a work tree
        return None
    return [root / os.fsdecode(name) for name in listing.stdout.split(b"\0") if name]


def _kept(root: Path, listed: list[Path]) -> Iterator[Path]:
    """git's list without skipped directories (an untracked venv, a committed build/) and files
    deleted from the work tree but still in the index."""
    skipped: dict[Path, bool] = {}
    for file in listed:
        # Its directories below root (a/b, then a): the named root itself is never skipped.
        directories = list(file.relative_to(root).parents)[:-1]
        if any(_skipped_once(skipped, root / directory) for directory in directories):
            continue
        if file.is_file():
            yield file


def _skipped_once(known: dict[Path, bool], directory: Path) -> bool:
    if directory not in known:
        known[directory] = _skipped(directory)
    return known[directory]


def _walk(root: Path) -> Iterator[Path]:
    """The files under root, without skipped directories and what its .gitignore files ignore
    (each pattern relative to its own file's directory, deeper files deciding first)."""
    ignores: dict[Path, list[tuple[Path, GitIgnoreSpec]]] = {root: []}
    for directory, dirnames, filenames in os.walk(root):
        here = Path(directory)
        specs = ignores.pop(here)
        if ".gitignore" in filenames:
            with open(here / ".gitignore", errors="replace") as lines:
                specs = [*specs, (here, GitIgnoreSpec.from_lines(lines))]
        kept = []
        for name in sorted(dirnames):
            child = here / name
            if not _skipped(child) and not _ignored(specs, child, directory=True):
                kept.append(name)
                ignores[child] = specs
        dirnames[:] = kept
        for name in filenames:
            if not _ignored(specs, here / name, directory=False):
                yield here / name


def _ignored(specs: list[tuple[Path, GitIgnoreSpec]], path: Path, *, directory: bool) -> bool:
    for base, spec in reversed(specs):
        relative = path.relative_to(base).as_posix() + ("/" if directory else "")
        included = spec.check_file(relative).include
        if included is not None:
            return included
    return False


def _excluded(spec: GitIgnoreSpec, root: Path, file: Path) -> bool:
    """Whether an --exclude pattern matches the file (a directory pattern matches what it holds)."""
    if not spec.patterns:
        return False
    try:
        relative = file.absolute().relative_to(Path.cwd())
    except ValueError:
        relative = file.relative_to(root)
    return spec.match_file(relative.as_posix())
