"""Initialised PostgreSQL data directories kept between runs, so a stack copies one instead of
running initdb (a copy takes a tenth of the time).

A template is made once per PostgreSQL build and initdb options (its key), right after the first
initdb with them, and lives in the user's cache: LOCAL_TWIN_CACHE_DIR, else
$XDG_CACHE_HOME/local-twin, else ~/.cache/local-twin; LOCAL_TWIN_CACHE_DIR=off turns templates off.
Its superuser password is kept beside it, readable by its owner only; every stack that copies the
template sets a password of its own as soon as the server is up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "LOCAL_TWIN_CACHE_DIR"
# Changes when what a template holds changes, so old templates are not used.
_FORMAT = 1


@dataclass(frozen=True)
class Template:
    datadir: Path
    superuser_password: str


def cache_root() -> Path | None:
    """Where templates live, or None when they are turned off."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "0", "false") else Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "local-twin" if xdg else Path.home() / ".cache" / "local-twin"


class DataDirectoryTemplates:
    """Templates under root/pgdata, one per key."""

    def __init__(self, root: Path) -> None:
        self.directory = root / "pgdata"

    @staticmethod
    def key(initdb: Path, options: list[str]) -> str:
        """The PostgreSQL build (initdb's path, size and modification time: a package upgrade changes
        them) and the options the data directory was made with."""
        status = initdb.stat()
        made_by = [str(initdb.resolve()), status.st_size, status.st_mtime_ns, options, _FORMAT]
        return hashlib.sha256(json.dumps(made_by).encode()).hexdigest()[:24]

    def find(self, key: str) -> Template | None:
        datadir = self.directory / key
        password = self.directory / f"{key}.password"
        # The password file is written last: with it, the template is whole.
        if not (datadir.is_dir() and password.is_file()):
            return None
        return Template(datadir, password.read_text())

    def save(self, key: str, datadir: Path, superuser_password: str) -> None:
        """Keep a copy of a freshly initialised data directory (before the stack configures it). Two
        stacks saving the same key at once keep one copy, whole."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.directory))
        try:
            shutil.copytree(datadir, staging / "pgdata", symlinks=True)
            try:
                os.rename(staging / "pgdata", self.directory / key)
            except OSError:
                return  # another stack saved it first
            password = self.directory / f"{key}.password"
            partial = staging / "password"
            partial.write_text(superuser_password)
            partial.chmod(0o600)
            os.replace(partial, password)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def copy(template: Template, datadir: Path) -> None:
        cp = shutil.which("cp")
        if cp is not None:
            # cp works outside the interpreter: shutil.copytree's Python work per file waits for the
            # GIL while moto starts in a thread of the same process (3 s instead of 0.5 s measured).
            subprocess.run([cp, "-R", "-P", "--", str(template.datadir), str(datadir)], check=True)
        else:
            shutil.copytree(template.datadir, datadir, symlinks=True)
        datadir.chmod(0o700)
