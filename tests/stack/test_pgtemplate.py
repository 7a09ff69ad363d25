"""Initialised data directories kept between runs: a stack copies one instead of running initdb,
and every stack still gets a superuser password of its own."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from emulator.stack import postgres as postgres_module
from emulator.stack.pgtemplate import CACHE_ENV, DataDirectoryTemplates, cache_root
from emulator.stack.process import hand_over, service_user


def test_templates_live_in_the_users_cache_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert cache_root() == Path("/somewhere/cache/local-twin")
    monkeypatch.setenv(CACHE_ENV, "/elsewhere")
    assert cache_root() == Path("/elsewhere")
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_root() is None


def test_a_template_is_keyed_by_the_postgresql_build_and_the_initdb_options(tmp_path: Path) -> None:
    initdb = tmp_path / "initdb"
    initdb.write_text("one build")
    key = DataDirectoryTemplates.key(initdb, ["-E", "UTF8"])
    assert DataDirectoryTemplates.key(initdb, ["-E", "UTF8"]) == key
    assert DataDirectoryTemplates.key(initdb, ["-E", "SQL_ASCII"]) != key
    initdb.write_text("an upgraded build")
    assert DataDirectoryTemplates.key(initdb, ["-E", "UTF8"]) != key


def test_a_saved_template_is_found_whole_with_its_password_readable_by_its_owner_only(tmp_path: Path) -> None:
    datadir = tmp_path / "made"
    (datadir / "base").mkdir(parents=True)
    (datadir / "PG_VERSION").write_text("15\n")
    templates = DataDirectoryTemplates(tmp_path / "cache")
    assert templates.find("k") is None
    templates.save("k", datadir, "secret")
    template = templates.find("k")
    assert template is not None
    assert template.superuser_password == "secret"
    assert (template.datadir / "PG_VERSION").read_text() == "15\n"
    assert (templates.directory / "k.password").stat().st_mode & 0o077 == 0
    # A second stack saving the same key keeps the first copy.
    (datadir / "PG_VERSION").write_text("changed\n")
    templates.save("k", datadir, "other")
    assert templates.find("k") == template
    assert (template.datadir / "PG_VERSION").read_text() == "15\n"
    assert [p.name for p in templates.directory.iterdir() if p.name.startswith(".")] == []


def test_a_template_without_its_password_file_is_not_used(tmp_path: Path) -> None:
    templates = DataDirectoryTemplates(tmp_path)
    (templates.directory / "k").mkdir(parents=True)
    assert templates.find("k") is None


@pytest.fixture
def workdirs() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for workdir in made:
        shutil.rmtree(workdir, ignore_errors=True)


def _server(workdirs: list[Path], password: str) -> postgres_module.PostgresServer:
    user = service_user()
    workdir = Path(tempfile.mkdtemp(prefix="local-twin-template-"))
    workdirs.append(workdir)
    hand_over(workdir, user)
    return postgres_module.PostgresServer(
        workdir,
        postgres_module.find_postgres_binaries(),
        postgres_module.PostgresSettings(max_connections=10),
        user=user,
        certificate=None,
        superuser_password=password,
    )


@pytest.mark.integration
def test_a_server_made_from_a_template_has_the_stacks_own_superuser_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdirs: list[Path]
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    first = _server(workdirs, "first-password")
    first.initialize()  # initdb, and the template is saved
    [template] = [p for p in (tmp_path / "pgdata").iterdir() if p.is_dir()]
    second = _server(workdirs, "second-password")
    second.initialize()  # copied from the template
    assert (second.datadir / "PG_VERSION").read_text() == (template / "PG_VERSION").read_text()
    second.start()
    try:
        with second.admin_connection() as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        assert second.superuser_password == "second-password"
        template_password = second.conninfo(user="postgres", password="first-password", dbname="postgres")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(template_password).close()
    finally:
        second.stop()
