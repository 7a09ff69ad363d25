"""The wire protocol through the proxy answers every client byte for byte as PostgreSQL does.

Scripts of raw protocol messages from several clients, interleaved over a pool of as many database
connections as there are clients (so no client ever waits for one), run once against PostgreSQL with
one connection per client and once through the proxy (see differential.py). A fixed corpus pins down
behaviours by name, the differences known today among them: they fail until the proxy is fixed, on
purpose (no xfail). Hypothesis generates more scripts: CI runs a small derandomized sample and reports
the first failing script as generated; a long run explores at random and shrinks what fails:

    LOCAL_TWIN_DIFFERENTIAL_EXAMPLES=10000 pytest tests/rdsproxy/live/test_protocol_differential.py \
        -k generated

A failing script prints as the code that builds it: paste it into CORPUS under a name that says what
PostgreSQL does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from .differential import (
    Bind,
    Client,
    Close,
    CopyData,
    CopyDone,
    CopyFail,
    Describe,
    Execute,
    Flush,
    Harness,
    Parse,
    Query,
    Script,
    Sync,
    Unknown,
    Vanish,
    client,
    difference,
    harness,
    render,
    script,
    scripts,
    send,
)
from .helpers import ProxyUnderTest

pytestmark = pytest.mark.integration

# Three clients at most, three database connections: floor(30 x 10 / 100).
PROXY_SETTINGS = {
    "require_tls": False,
    "iam_auth": "DISABLED",
    "max_connections_percent": 10,
    "connection_borrow_timeout": 5,
}
LONG_RUN_EXAMPLES = int(os.environ.get("LOCAL_TWIN_DIFFERENTIAL_EXAMPLES", "0"))
CI_EXAMPLES = 25
SELECT_T = "select id, note from t order by id, note"


@pytest.fixture
def diff(make_proxy: Callable[..., ProxyUnderTest]) -> Iterator[Harness]:
    with harness(make_proxy(**PROXY_SETTINGS)) as running:
        yield running


@dataclass(frozen=True)
class Scenario:
    plan: Script
    # What PostgreSQL's answers must show (substrings of the rendered transcript), so that the script
    # demonstrably exercises what its name says.
    postgres_shows: tuple[str, ...] = ()


TWO = (Client(), Client())

CORPUS: dict[str, Scenario] = {
    # -- known to differ today -------------------------------------------------------------------
    "an_insert_left_unsynced_by_a_vanished_client_is_never_committed": Scenario(
        script(
            TWO,
            send(
                0, Parse("", "insert into t values ($1::int, 'p')"), Bind("", "", ("1",)), Execute(), Flush()
            ),
            Vanish(0),
            send(1, Query(SELECT_T)),
        ),
        ("C command_complete: INSERT 0 1", "C command_complete: SELECT 0"),
    ),
    "a_failure_left_unsynced_by_a_vanished_client_does_not_swallow_the_next_query": Scenario(
        script(
            TWO,
            send(0, Parse("", "select 1/0"), Bind(), Execute(), Flush()),
            Vanish(0),
            send(1, Query("select 1")),
        ),
        ("22012 division by zero", "D data_row: '1'"),
    ),
    "each_client_binds_its_own_unnamed_statement": Scenario(
        script(
            TWO,
            send(0, Parse("", "select 1"), Sync()),
            send(1, Parse("", SELECT_T), Sync()),
            send(0, Bind(), Execute(), Sync()),
        ),
        ("D data_row: '1'",),
    ),
    "an_unknown_message_type_ends_that_client_only": Scenario(
        script(TWO, send(0, Unknown("Y")), send(1, Query("select 1"))),
        ("FATAL 08P01 invalid frontend message type 89", "[closed by the server]", "D data_row: '1'"),
    ),
    "deallocate_all_frees_protocol_statement_names": Scenario(
        script(
            (Client(),),
            send(0, Parse("a", "select 1"), Sync()),
            send(0, Query("deallocate all")),
            send(0, Parse("a", "select 1"), Bind("", "a"), Execute(), Sync()),
        ),
        ("C command_complete: DEALLOCATE ALL", "D data_row: '1'"),
    ),
    "sql_deallocate_drops_a_protocol_statement": Scenario(
        script(
            (Client(),),
            send(0, Parse("a", "select 1"), Sync()),
            send(0, Query("deallocate a")),
            send(0, Bind("", "a"), Execute(), Sync()),
        ),
        ("C command_complete: DEALLOCATE", '26000 prepared statement "a" does not exist'),
    ),
    "a_statement_bound_again_is_the_one_its_name_stands_for_now": Scenario(
        script(
            (Client(),),
            send(0, Parse("a", "select 1"), Bind("", "a"), Execute(), Sync()),
            send(0, Bind("", "a"), Execute(), Bind("p", "a"), Execute("p"), Sync()),
            send(0, Close("S", "a"), Parse("a", "select 2"), Bind("", "a"), Execute(), Sync()),
            send(0, Bind("", "a"), Execute(), Close("S", "a"), Sync()),
            send(0, Bind("", "a"), Execute(), Sync()),
        ),
        ("D data_row: '1'", "D data_row: '2'", '26000 prepared statement "a" does not exist'),
    ),
    "clients_binding_one_name_each_get_their_own_statement": Scenario(
        script(
            TWO,
            send(0, Parse("a", "select 1"), Bind("", "a"), Execute(), Sync()),
            send(1, Parse("a", "select 2"), Bind("", "a"), Execute(), Sync()),
            send(0, Bind("", "a"), Execute(), Sync()),
            send(1, Bind("", "a"), Execute(), Sync()),
        ),
        ("D data_row: '1'", "D data_row: '2'"),
    ),
    "a_close_skipped_after_an_error_keeps_the_statement": Scenario(
        script(
            (Client(),),
            send(0, Parse("a", "select 1"), Sync()),
            send(0, Parse("", "select 1/0"), Bind(), Execute(), Close("S", "a"), Sync()),
            send(0, Bind("", "a"), Execute(), Sync()),
        ),
        ("22012 division by zero", "D data_row: '1'"),
    ),
    "a_client_without_extra_float_digits_gets_the_server_default": Scenario(
        script(
            (client(extra_float_digits="0"), Client()),
            send(0, Query("select 1.0::float8/3")),
            send(1, Query("select 1.0::float8/3")),
        ),
        ("D data_row: '0.333333333333333'", "D data_row: '0.3333333333333333'"),
    ),
    # -- found by this harness: differ today -------------------------------------------------------
    "a_client_that_terminates_mid_pipeline_leaves_no_transaction_behind": Scenario(
        script((Client(),), send(0, Parse("", "insert into t values (1, 'x')"), Bind(), Execute(), Flush())),
        ("C command_complete: INSERT 0 1",),
    ),
    "errors_the_proxy_makes_carry_postgresqls_fields": Scenario(
        script(
            (Client(),),
            send(0, Bind("", "a"), Sync()),
            send(0, Parse("b", "select 1"), Parse("b", "select 1"), Sync()),
        ),
        ("F='prepare.c'", "42P05"),
    ),
    "a_syntax_error_is_reported_before_a_duplicate_name": Scenario(
        script((Client(),), send(0, Parse("b", "select 1"), Parse("b", "selec 1"), Sync())),
        ('42601 syntax error at or near "selec"',),
    ),
    "an_error_about_a_missing_statement_fails_the_transaction": Scenario(
        script(
            (Client(),),
            send(0, Query("begin")),
            send(0, Bind("", "b"), Sync()),
            send(0, Query("select 1")),
        ),
        ("Z ready_for_query: E", "25P02 current transaction is aborted"),
    ),
    "sql_execute_runs_a_protocol_statement": Scenario(
        script((Client(),), send(0, Parse("a", "select 1"), Sync(), Query("execute a"))),
        ("C command_complete: SELECT 1",),
    ),
    "errors_about_a_statement_name_it_as_the_client_did": Scenario(
        script((Client(),), send(0, Parse("a", "select 1"), Bind("", "a", ("1",)), Sync())),
        ('bind message supplies 1 parameters, but prepared statement "a" requires 0',),
    ),
    "a_named_parse_skipped_after_an_error_leaves_no_statement": Scenario(
        script(
            (Client(),),
            send(
                0,
                Parse("", "select 1/0"),
                Bind(),
                Execute(),
                Parse("b", "select 3"),
                Sync(),
                Bind("", "b"),
                Sync(),
            ),
        ),
        ('26000 prepared statement "b" does not exist',),
    ),
    "a_query_skipped_after_an_extended_error_gets_no_answer": Scenario(
        script(
            (Client(),),
            send(0, Parse("a", "select 1"), Sync()),
            send(0, Parse("", "select 1/0"), Bind(), Execute(), Query("select 2"), Close("S", "a"), Sync()),
            send(0, Bind("", "a"), Execute(), Sync()),
        ),
        ("22012 division by zero", "D data_row: '1'"),
    ),
    "a_message_skipped_after_an_error_gets_no_answer_from_the_proxy_either": Scenario(
        script(
            (Client(),),
            send(0, Parse("", "select 1/0"), Bind(), Execute(), Flush()),
            send(0, Describe("S", "b"), Sync()),
        ),
        ("22012 division by zero",),
    ),
    "answers_before_an_error_arrive_without_a_sync": Scenario(
        script((Client(),), send(0, Parse("", "select 1"), Bind("", "a"), Flush())),
        ("1 parse_complete", '26000 prepared statement "a" does not exist'),
    ),
    "a_message_other_than_copy_data_ends_a_copy_and_the_connection": Scenario(
        script(
            (Client(),),
            send(0, Query("copy t from stdin"), CopyData("5\tcopied\n"), CopyFail("stop")),
            send(0, Query("copy t from stdin"), Query("select 1")),
            send(0, Query(SELECT_T)),
        ),
        ("COPY from stdin failed: stop", "08P01 unexpected message type 0x51 during COPY from stdin"),
    ),
    "a_message_the_proxy_would_answer_itself_is_copy_data_once_copy_began": Scenario(
        script(
            (Client(),),
            # The Close reaches PostgreSQL in COPY mode (an error), not the proxy's own answer.
            send(0, Query("copy t from stdin"), Close("S", ""), Sync()),
        ),
        ("08P01 unexpected message type 0x43 during COPY from stdin",),
    ),
    "a_failed_discard_all_in_a_transaction_leaves_the_session_in_it": Scenario(
        script(
            (Client(),),
            send(0, Query("begin")),
            send(0, Query("discard all")),
            send(0, Execute("", 0), Flush(), Describe("P", ""), Flush()),
        ),
        ("25001 DISCARD ALL cannot run inside a transaction block", "25P02 current transaction is aborted"),
    ),
    "a_pinned_client_gets_postgresqls_fatal_error_alone": Scenario(
        script(
            (Client(),),
            send(0, Query("prepare s as select 1")),
            send(0, Query("copy t from stdin"), Query("select 1")),
        ),
        ("FATAL 08P01 terminating connection because protocol synchronization was lost",),
    ),
    "a_duplicate_parse_during_copy_reaches_postgresql": Scenario(
        script(
            (Client(),),
            send(0, Parse("b", "select 1"), Sync()),
            send(0, Query("copy t from stdin"), Parse("b", "select 1"), Sync()),
        ),
        ("08P01 unexpected message type 0x50 during COPY from stdin",),
    ),
    "discard_all_keeps_the_startup_parameters": Scenario(
        script(
            (client(TimeZone="Asia/Tokyo"),),
            send(0, Query("discard all"), Query("select '2024-01-02 03:04:05+00'::timestamptz")),
        ),
        ("2024-01-02 12:04:05+09",),
    ),
    "deallocate_all_sent_with_parse_forgets_the_clients_statements": Scenario(
        script(
            (Client(),),
            # The database connection keeps the statement after the client closes it.
            send(0, Parse("a", "select 1"), Sync(), Close("S", "a"), Sync()),
            send(0, Parse("", "deallocate all"), Bind(), Execute(), Parse("a", "select 1"), Sync()),
            send(0, Bind("", "a"), Execute("", 1), Sync()),
            send(0, Parse("", "deallocate all"), Bind(), Execute(), Bind("", "a"), Execute("", 1), Sync()),
        ),
        (
            "C command_complete: DEALLOCATE ALL",
            "D data_row: '1'",
            '26000 prepared statement "a" does not exist',
        ),
    ),
    "a_reset_and_a_copy_from_stdin_in_one_query_take_the_copy_data": Scenario(
        script(
            (client(TimeZone="Asia/Tokyo"),),
            send(0, Query("reset all; copy t from stdin"), CopyData("5\tcopied\n"), CopyDone()),
            send(0, Query(SELECT_T), Query("show timezone")),
        ),
        ("C command_complete: COPY 1", "D data_row: '5' 'copied'", "D data_row: 'Asia/Tokyo'"),
    ),
    "prepare_sent_with_parse_takes_the_name": Scenario(
        script(
            (Client(),),
            send(0, Parse("", "prepare s as select 7"), Bind(), Execute(), Sync()),
            send(0, Parse("s", "select 1"), Sync()),
            send(0, Query("execute s")),
        ),
        ('42P05 prepared statement "s" already exists', "D data_row: '7'"),
    ),
    "a_parse_in_a_failed_transaction_fails_even_when_the_connection_has_the_statement": Scenario(
        # Found by the long generated run: the proxy answered ParseComplete for a statement its
        # connection already had, where PostgreSQL refuses any Parse in a failed transaction.
        script(
            (Client(),),
            send(0, Query("begin"), Parse("a", "select 1"), Sync(), Close("S", "a"), Sync()),
            send(0, Query("select 1/0")),
            send(0, Parse("b", "select 1"), Bind("", "b", ()), Execute(), Sync()),
            send(0, Query("rollback"), Parse("b", "select 1"), Bind("", "b", ()), Execute(), Sync()),
        ),
        ("25P02 current transaction is aborted", "D data_row: '1'"),
    ),
    "a_parse_behind_a_failing_query_in_one_pipeline_fails_too": Scenario(
        script(
            (Client(),),
            send(0, Query("begin"), Parse("a", "select 1"), Sync(), Close("S", "a"), Sync()),
            send(0, Query("select 1/0"), Parse("b", "select 1"), Bind("", "b", ()), Execute(), Sync()),
            send(0, Query("rollback")),
            # Behind an extended-protocol failure without a Sync between: skipped with it.
            send(0, Query("begin"), Parse("", "select 1/0"), Bind(), Execute(), Parse("c", "select 1")),
            send(0, Sync()),
            send(0, Query("rollback"), Parse("c", "select 1"), Bind("", "c", ()), Execute(), Sync()),
        ),
        ("25P02 current transaction is aborted", "D data_row: '1'"),
    ),
    # -- pinned down: the same today -------------------------------------------------------------
    "a_transaction_spans_steps_while_other_clients_come_and_go": Scenario(
        script(
            TWO,
            send(0, Query("begin"), Query("insert into t values (1, 'x')")),
            send(1, Query(SELECT_T)),
            send(0, Query(SELECT_T), Query("commit")),
            send(1, Query(SELECT_T)),
        ),
        ("Z ready_for_query: T", "D data_row: '1' 'x'"),
    ),
    "a_client_vanishing_mid_transaction_leaves_nothing_behind": Scenario(
        script(
            TWO,
            send(0, Query("begin"), Query("insert into t values (1, 'x')")),
            Vanish(0),
            send(1, Query(SELECT_T)),
            send(0, Query(SELECT_T)),
        ),
        ("(connected again)", "C command_complete: SELECT 0"),
    ),
    "an_error_in_a_simple_query_starts_no_skipping": Scenario(
        script((Client(),), send(0, Query("select 1/0"), Parse("", "select 2"), Bind(), Execute(), Sync())),
        ("22012 division by zero", "D data_row: '2'"),
    ),
    "a_flushed_pipeline_goes_on_after_other_clients_ran": Scenario(
        script(
            TWO,
            send(1, Query("insert into t values (1, 'x'), (2, 'y')")),
            send(0, Parse("a", SELECT_T), Bind("p", "a"), Execute("p", 1), Flush()),
            send(1, Query("insert into t values (3, 'z')")),
            send(0, Execute("p", 1), Close("P", "p"), Sync()),
        ),
        ("s portal_suspended", "D data_row: '2' 'y'"),
    ),
    "named_statements_belong_to_their_client": Scenario(
        script(
            TWO,
            send(0, Parse("a", "select 1"), Sync()),
            send(1, Parse("a", "select 2"), Bind("", "a"), Execute(), Sync()),
            send(0, Bind("", "a"), Execute(), Sync()),
            send(1, Close("S", "a"), Sync()),
            send(0, Describe("S", "a"), Sync()),
        ),
        ("D data_row: '1'", "D data_row: '2'", "t parameter_description"),
    ),
    "copy_from_stdin_goes_on_across_steps": Scenario(
        script(
            TWO,
            send(0, Query("copy t from stdin"), CopyData("5\tcopied\n")),
            send(1, Query(SELECT_T)),
            send(0, CopyData("6\tmore\n"), Flush(), Sync(), CopyDone()),
            send(1, Query(SELECT_T)),
        ),
        ("G copy_in_response", "C command_complete: COPY 2", "D data_row: '6' 'more'"),
    ),
    "a_client_vanishing_mid_copy_loses_its_rows": Scenario(
        script(
            TWO,
            send(0, Query("copy t from stdin"), CopyData("5\tcopied\n")),
            Vanish(0),
            send(1, Query(SELECT_T)),
        ),
        ("G copy_in_response", "C command_complete: SELECT 0"),
    ),
    "startup_parameters_follow_their_client": Scenario(
        script(
            (client(TimeZone="Asia/Tokyo", DateStyle="SQL, DMY"), client(application_name="app_two")),
            send(0, Query("select '2024-01-02 03:04:05+00'::timestamptz"), Query("show application_name")),
            send(1, Query("select '2024-01-02 03:04:05+00'::timestamptz"), Query("show application_name")),
        ),
        ("02/01/2024 12:04:05 JST", "2024-01-02 03:04:05+00", "D data_row: 'app_two'"),
    ),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_the_proxy_answers_like_postgresql(diff: Harness, name: str) -> None:
    diff.assert_same(CORPUS[name].plan)


@pytest.mark.parametrize("name", list(CORPUS))
def test_the_harness_reads_postgresql_reproducibly(diff: Harness, name: str) -> None:
    # The harness itself, against PostgreSQL twice: no guess about when an answer is complete may be
    # wrong (no timeout), and nothing may vary between runs, so that any difference is the proxy's.
    scenario = CORPUS[name]
    first = diff.transcript(scenario.plan, diff.direct)
    second = diff.transcript(scenario.plan, diff.direct)
    assert not first.timed_out, "\n".join(render(outcome) for outcome in first.outcomes)
    assert difference(scenario.plan, first, second, names=("PostgreSQL", "PostgreSQL again")) is None
    shown = "\n".join(render(outcome) for outcome in first.outcomes)
    for expected in scenario.postgres_shows:
        assert expected in shown, f"PostgreSQL's answers do not show {expected!r}:\n{shown}"


# Generated scripts wait less for an answer than the corpus: each failing example is replayed while
# Hypothesis looks for a smaller one, and a stuck answer costs the whole wait every time.
GENERATED_TIMEOUT = 3.0


@pytest.fixture
def generated_diff(make_proxy: Callable[..., ProxyUnderTest]) -> Iterator[Harness]:
    with harness(make_proxy(**PROXY_SETTINGS), timeout=GENERATED_TIMEOUT) as running:
        yield running


GENERATED = settings(
    max_examples=LONG_RUN_EXAMPLES or CI_EXAMPLES,
    deadline=None,
    # CI runs the same sample every time, and reports the first failing script as it was generated:
    # shrinking replays failing scripts, each waiting out its timeouts, for minutes. A long run explores
    # at random, shrinks, and keeps what failed in .hypothesis/ for the next run.
    derandomize=not LONG_RUN_EXAMPLES,
    phases=list(Phase) if LONG_RUN_EXAMPLES else [Phase.explicit, Phase.reuse, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.timeout(0 if LONG_RUN_EXAMPLES else 300)
@GENERATED
@given(plan=scripts())
def test_generated_scripts_get_the_same_answers_through_the_proxy(
    generated_diff: Harness, plan: Script
) -> None:
    generated_diff.assert_same(plan)


@settings(GENERATED, max_examples=10)
@given(plan=scripts())
def test_generated_scripts_get_the_same_answers_from_postgresql_twice(
    generated_diff: Harness, plan: Script
) -> None:
    first = generated_diff.transcript(plan, generated_diff.direct)
    assert not first.timed_out, repr(plan)
    second = generated_diff.transcript(plan, generated_diff.direct)
    assert difference(plan, first, second, names=("PostgreSQL", "PostgreSQL again")) is None
