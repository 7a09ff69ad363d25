"""A client's prepared statements: its own names, shared backend names by content."""

from __future__ import annotations

import pytest

from emulator.rdsproxy.protocol.statements import SqlCommand, StatementCatalogue, StatementNames, sql_commands

pytestmark = pytest.mark.unit


def test_clients_that_prepare_the_same_statement_share_its_backend_name() -> None:
    names = StatementNames()
    alice, bob = StatementCatalogue(names), StatementCatalogue(names)
    a = alice.prepare("s1", "select $1", b"\0\x01\0\0\0\x17", None)
    b = bob.prepare("mine", "select $1", b"\0\x01\0\0\0\x17", None)
    assert a.backend_name == b.backend_name
    assert a.backend_name.startswith(StatementNames.PREFIX)


def test_other_text_or_other_parameter_types_get_another_backend_name() -> None:
    names = StatementNames()
    catalogue = StatementCatalogue(names)
    first = catalogue.prepare("a", "select $1", b"\0\x01\0\0\0\x17", None)
    other_types = catalogue.prepare("b", "select $1", b"\0\x01\0\0\0\x19", None)
    other_text = catalogue.prepare("c", "select $1 + 1", b"\0\x01\0\0\0\x17", None)
    assert len({first.backend_name, other_types.backend_name, other_text.backend_name}) == 3


def test_a_client_knows_only_its_own_statements_and_forgets_what_it_closes() -> None:
    names = StatementNames()
    alice, bob = StatementCatalogue(names), StatementCatalogue(names)
    alice.prepare("s1", "select 1", b"\0\0", "why it pins")
    assert "s1" in alice
    assert "s1" not in bob
    assert alice.get("s1") is not None
    assert alice.forget("s1") is not None
    assert "s1" not in alice
    assert alice.forget("s1") is None  # closing an unknown name is no error
    assert len(alice) == 0


@pytest.mark.parametrize(
    ("sql", "commands"),
    [
        ("DISCARD ALL", [SqlCommand("forget_all")]),
        ("DEALLOCATE ALL", [SqlCommand("forget_all")]),
        ("deallocate prepare all", [SqlCommand("forget_all")]),
        ("DEALLOCATE q", [SqlCommand("deallocate", "q", (11, 12))]),
        ('DEALLOCATE PREPARE "Q1"', [SqlCommand("deallocate", "Q1", (19, 23))]),
        ("PREPARE s AS SELECT 1", [SqlCommand("prepare", "s", (8, 9))]),
        ("select 1; EXECUTE s(2)", [None, SqlCommand("execute", "s", (18, 19))]),
        ("DISCARD PLANS", None),
        ("SELECT 'deallocate all'", None),
        ("SELECT 1", None),
    ],
)
def test_what_each_statement_of_a_query_does_to_prepared_statements(
    sql: str, commands: list[SqlCommand | None] | None
) -> None:
    assert sql_commands(sql) == commands
