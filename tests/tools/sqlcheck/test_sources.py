"""Finding the queries in source files: where each one is, and the lines a comment covers."""

from __future__ import annotations

import pytest

from emulator.tools.sqlcheck.sources import Unparsable, looks_like_sql, python_source, sql_source

pytestmark = pytest.mark.unit


def test_python_strings_that_start_like_sql_are_queries_with_their_line_and_column() -> None:
    source = python_source(b'import db\n\ndb.run("SELECT 1")\nTEXT = "set the table for dinner"\n')
    assert [(q.sql, q.line, q.column) for q in source.queries] == [("SELECT 1", 3, 8)]


def test_the_column_counts_characters_not_utf8_bytes() -> None:
    [query] = python_source('x = ("é", "LISTEN orders")\n'.encode()).queries
    assert query.column == 11


def test_docstrings_and_bare_string_statements_are_not_queries() -> None:
    source = python_source(
        b'"""Listen to the queue."""\ndef f():\n    """Set up the session."""\n    "DISCARD ALL"\n'
    )
    assert source.queries == []


def test_an_f_string_is_one_query_with_placeholders_for_its_values() -> None:
    [query] = python_source(b'q = f"CREATE TEMP TABLE t_{n} AS SELECT {x}"\n').queries
    assert query.sql == "CREATE TEMP TABLE t_$1 AS SELECT $1"


def test_a_multi_line_string_covers_every_line_from_its_start_to_its_end() -> None:
    source = python_source(b'x = 1\nLOCK = """\n    SELECT pg_advisory_lock(1)\n"""\n')
    [query] = source.queries
    assert (query.line, list(query.covers)) == (2, [2, 3, 4])


def test_a_python_file_that_does_not_parse_says_where() -> None:
    with pytest.raises(Unparsable) as raised:
        python_source(b"def broken(:\n    pass\n")
    assert (raised.value.line, str(raised.value)) == (1, "invalid syntax")


def test_a_python_file_that_does_not_decode_is_unparsable_too() -> None:
    with pytest.raises(Unparsable):
        python_source(b"# -*- coding: utf-8 -*-\nx = '\xff'\n")


def test_only_python_comments_hold_suppressions_not_strings_that_look_like_them() -> None:
    source = python_source(b'x = "rds-proxy: allow set"  # rds-proxy: allow listen -- why\n')
    assert [(c.line, c.column, c.text) for c in source.comments] == [
        (1, 31, "rds-proxy: allow listen -- why")
    ]


SQL_FILE = """\
CREATE TABLE t (id int);
-- the notifier
LISTEN t_changed;
SELECT 1; SET work_mem = '64MB';
INSERT INTO t
VALUES (1);
"""


def test_sql_files_are_split_into_statements_each_with_its_line_and_column() -> None:
    queries = sql_source(SQL_FILE).queries
    assert [(q.line, q.column, q.sql) for q in queries] == [
        (1, 1, "CREATE TABLE t (id int)"),
        (3, 1, "LISTEN t_changed"),
        (4, 1, "SELECT 1"),
        (4, 11, "SET work_mem = '64MB'"),
        (5, 1, "INSERT INTO t\nVALUES (1)"),
    ]


def test_a_sql_statement_covers_the_lines_since_the_previous_one_and_its_own() -> None:
    covers = [list(q.covers) for q in sql_source(SQL_FILE).queries]
    # LISTEN covers the comment above it; two statements on line 4 both cover it.
    assert covers == [[1], [2, 3], [4], [4], [5, 6]]


def test_semicolons_in_literals_comments_and_dollar_quotes_do_not_split_statements() -> None:
    text = "SELECT ';'; -- a ; here\nDO $$ BEGIN PERFORM 1; END $$;\n"
    assert [q.sql for q in sql_source(text).queries] == ["SELECT ';'", "DO $$ BEGIN PERFORM 1; END $$"]


def test_sql_comments_hold_suppressions_but_literals_do_not() -> None:
    text = "SELECT 'rds-proxy: allow set';\n/* rds-proxy: allow load -- x */ LOAD 'auto_explain';\n"
    assert [(c.line, c.column, c.text) for c in sql_source(text).comments] == [
        (2, 4, "rds-proxy: allow load -- x */ LOAD 'auto_explain';")
    ]


@pytest.mark.parametrize(
    ("text", "left_open"),
    [
        ("SELECT 1;\nSET a = 'x;\nLISTEN t;\n", ("quoted string", 2, 9)),
        ('SELECT 1;\nSELECT "x;\nLISTEN t;\n', ("quoted identifier", 2, 8)),
        ("SELECT 1;\nDO $body$ BEGIN;\nLISTEN t;\n", ("dollar-quoted string", 2, 4)),
        ("SELECT 1;\n/* a /* nested */ comment;\nLISTEN t;\n", ("block comment", 2, 1)),
    ],
)
def test_what_a_sql_file_leaves_open_ends_the_statements_before_it(
    text: str, left_open: tuple[str, int, int]
) -> None:
    source = sql_source(text)
    assert source.unterminated is not None
    assert (source.unterminated.what, source.unterminated.line, source.unterminated.column) == left_open
    # The statement left open is sent whole with the rest of the file, and fails: it cannot pin.
    assert [q.sql for q in source.queries] == ["SELECT 1"]


def test_closed_quotes_comments_and_an_empty_dollar_quote_leave_nothing_open() -> None:
    source = sql_source("SELECT 'a', \"b\", $$$$, $t$ x $t$; /* c /* d */ */ -- e\n")
    assert (source.unterminated, len(source.queries)) == (None, 1)


def test_a_comment_after_what_is_left_open_is_part_of_it_not_a_suppression() -> None:
    source = sql_source("SELECT 'x;\n-- rds-proxy: allow listen -- why\nLISTEN t;\n")
    assert source.comments == []


@pytest.mark.parametrize(
    ("text", "sql"),
    [
        ("SET search_path TO app", True),
        ("set the table for dinner", False),
        ("-- why\nSELECT pg_advisory_lock(1)", True),
        ("selection", False),
    ],
)
def test_what_looks_like_sql(text: str, sql: bool) -> None:
    assert looks_like_sql(text) is sql
