"""Your schema on the stack: .sql files run as its owner; errors name file and line."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from emulator.errors import ComponentError
from emulator.stack.embedded import EmbeddedStack, StackConfig
from emulator.stack.proxies import ProxyKind
from emulator.stack.schema import sql_files

pytestmark = pytest.mark.integration


def _stack(*paths: Path) -> EmbeddedStack:
    return EmbeddedStack(StackConfig(proxy=ProxyKind.DIRECT, init_sql=paths))


def test_a_directory_s_files_run_in_name_order_as_the_database_owner(tmp_path: Path) -> None:
    schema = tmp_path / "schema"
    schema.mkdir()
    (schema / "010_seed.sql").write_text("INSERT INTO items (name) VALUES ('first');\n")
    (schema / "001_tables.sql").write_text("CREATE TABLE items (id serial PRIMARY KEY, name text);\n")
    (schema / "notes.txt").write_text("not SQL")
    extra = tmp_path / "extra.sql"
    extra.write_text("INSERT INTO items (name) VALUES ('second');\n")
    with _stack(schema, extra) as stack:
        env = stack.environment()
        with psycopg.connect(
            host=env["PGHOST"], port=env["PGPORT"], user=env["PGUSER"], password=env["PGPASSWORD"],
            dbname=env["PGDATABASE"],
        ) as conn:  # fmt: skip
            rows = conn.execute("SELECT i.name, pg_get_userbyid(c.relowner) FROM items i, pg_class c "
                                "WHERE c.relname = 'items' ORDER BY i.id").fetchall()  # fmt: skip
    assert rows == [("first", "app_user"), ("second", "app_user")]


def test_an_error_names_the_file_and_line_and_stops_the_stack(tmp_path: Path) -> None:
    schema = tmp_path / "schema.sql"
    schema.write_text("CREATE TABLE ok (id int);\n\nCREATE TABLE broken (id int,);\n")
    with pytest.raises(ComponentError) as caught, _stack(schema):
        pass
    message = str(caught.value)
    assert message.startswith(f"Init SQL: {schema} failed")
    assert f"{schema}:3: ERROR:  syntax error" in message


def test_a_missing_path_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ComponentError, match=r"does not exist"):
        sql_files([tmp_path / "nope.sql"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ComponentError, match=r"holds no \.sql file"):
        sql_files([tmp_path / "empty"])
