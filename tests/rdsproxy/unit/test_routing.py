"""The response router: clients see the answers to what they sent, in order, nothing more."""

from __future__ import annotations

import pytest

from emulator.rdsproxy.protocol import messages as m
from emulator.rdsproxy.protocol.messages import Backend
from emulator.rdsproxy.protocol.routing import Expect, ResponseRouter

pytestmark = pytest.mark.unit

PARSE_OK = m.frame(Backend.PARSE_COMPLETE)
BIND_OK = m.frame(Backend.BIND_COMPLETE)
CLOSE_OK = m.frame(Backend.CLOSE_COMPLETE)
ROW = m.frame(Backend.DATA_ROW, b"\x00\x01\x00\x00\x00\x011")
DONE = m.frame(Backend.COMMAND_COMPLETE, b"SELECT 1\0")
READY = m.ready_for_query(b"I")
ERROR = m.error_response("ERROR", "42P01", "relation does not exist")
NOTICE = m.notice_response("00000", "hello")


def route(router: ResponseRouter, *frames: bytes) -> list[bytes]:
    out = []
    for raw in frames:
        out += router.route(raw[0], raw)
    return out


def test_a_parse_the_proxy_added_is_invisible_to_the_client() -> None:
    router = ResponseRouter()
    router.expect(Expect.PARSE, forward=False)  # re-preparation on this connection
    router.expect(Expect.BIND)
    router.expect(Expect.EXECUTE)
    router.expect(Expect.SYNC)
    assert route(router, PARSE_OK, BIND_OK, ROW, DONE, READY) == [BIND_OK, ROW, DONE, READY]
    assert router.idle


def test_a_made_up_answer_waits_for_the_answers_before_it() -> None:
    router = ResponseRouter()
    router.expect(Expect.PARSE)
    assert router.answer(CLOSE_OK) == []  # the Parse before it is still unanswered
    router.expect(Expect.SYNC)
    assert route(router, PARSE_OK) == [PARSE_OK, CLOSE_OK]
    assert route(router, READY) == [READY]


def test_a_made_up_answer_with_nothing_outstanding_goes_out_at_once() -> None:
    router = ResponseRouter()
    assert router.answer(PARSE_OK) == [PARSE_OK]


def test_after_an_error_the_answers_until_sync_are_skipped_as_the_server_skips_them() -> None:
    undone = []
    router = ResponseRouter()
    router.expect(Expect.PARSE, forward=False, undo=lambda: undone.append("parse"))
    router.answer(PARSE_OK, undo=lambda: undone.append("made-up parse"))  # answers a skipped message
    router.expect(Expect.BIND, undo=lambda: undone.append("bind"))
    router.expect(Expect.EXECUTE)
    router.expect(Expect.SYNC)
    # The proxy's own Parse failed: the client still learns why.
    assert route(router, ERROR, READY) == [ERROR, READY]
    # What the skipped messages did is undone newest first, then what the failed one did.
    assert undone == ["bind", "made-up parse", "parse"]
    assert router.idle


def test_a_failed_message_may_react_otherwise_than_a_skipped_one() -> None:
    seen = []
    router = ResponseRouter()
    router.expect(Expect.PARSE, undo=lambda: seen.append("restored"), failed=lambda: seen.append("dropped"))
    router.expect(Expect.SYNC)
    route(router, ERROR, READY)
    assert seen == ["dropped"]


def test_a_simple_query_inside_a_failed_pipeline_is_skipped_and_owes_no_ready_for_query() -> None:
    router = ResponseRouter()
    router.expect(Expect.BIND)
    router.expect(Expect.QUERY)  # PostgreSQL skips it: it never answers it
    router.expect(Expect.SYNC)
    assert route(router, ERROR, READY) == [ERROR, READY]
    assert router.idle


def test_the_server_skips_until_the_next_sync_is_sent_and_is_unsynced_until_then() -> None:
    router = ResponseRouter()
    assert router.settled
    router.expect(Expect.EXECUTE)
    assert router.unsynced
    assert route(router, ERROR) == [ERROR]
    assert router.idle
    assert router.skipping  # an error with no Sync sent yet
    assert not router.settled
    router.expect(Expect.SYNC)
    assert not router.skipping
    assert not router.unsynced
    route(router, READY)
    assert router.settled


def test_an_error_is_shown_with_the_clients_names_or_hidden() -> None:
    router = ResponseRouter()
    router.expect(Expect.BIND, error=lambda raw: m.rename_in_error(raw, "rdsproxy_1", "mine"))
    router.expect(Expect.SYNC)
    missing = m.error_response("ERROR", "26000", 'prepared statement "rdsproxy_1" does not exist')
    shown = route(router, missing, READY)
    assert m.parse_message_fields(shown[0][5:])["M"] == 'prepared statement "mine" does not exist'
    router.expect(Expect.PARSE, forward=False, error=lambda raw: None)
    router.expect(Expect.SYNC, forward=False)
    assert route(router, ERROR, READY) == []


def test_each_statement_of_a_simple_query_is_reported_as_it_completes() -> None:
    tags = []
    router = ResponseRouter()
    router.expect(Expect.QUERY, on_complete=lambda raw: tags.append(raw[5:-1]))
    assert not router.passthrough()  # answers are looked at one by one
    route(router, m.frame(Backend.COMMAND_COMPLETE, b"PREPARE\0"), DONE, READY)
    assert tags == [b"PREPARE", b"SELECT 1"]


def test_notices_and_notifications_pass_at_any_time() -> None:
    router = ResponseRouter()
    router.expect(Expect.PARSE, forward=False)
    router.expect(Expect.SYNC)
    assert route(router, NOTICE, PARSE_OK, NOTICE, READY) == [NOTICE, NOTICE, READY]


def test_a_simple_query_ends_only_at_ready_for_query_even_after_an_error() -> None:
    router = ResponseRouter()
    router.expect(Expect.QUERY)
    assert route(router, ERROR) == [ERROR]
    assert not router.idle
    assert route(router, READY) == [READY]
    assert router.idle


def test_the_proxys_own_query_is_swallowed_whole() -> None:
    router = ResponseRouter()
    router.expect(Expect.QUERY, forward=False)
    router.expect(Expect.QUERY)
    assert route(router, m.frame(Backend.COMMAND_COMPLETE, b"SET\0"), READY, ROW, DONE, READY) == [
        ROW,
        DONE,
        READY,
    ]


def test_describe_statement_ends_at_its_row_description() -> None:
    router = ResponseRouter()
    router.expect(Expect.DESCRIBE_STATEMENT)
    router.answer(CLOSE_OK)
    parameters = m.frame(Backend.PARAMETER_DESCRIPTION, b"\x00\x00")
    no_data = m.frame(Backend.NO_DATA)
    assert route(router, parameters) == [parameters]
    assert route(router, no_data) == [no_data, CLOSE_OK]


def test_simple_queries_and_syncs_may_pass_through_in_bulk_and_made_up_answers_may_not() -> None:
    router = ResponseRouter()
    assert router.passthrough()  # nothing outstanding: whatever the server says goes to the client
    router.expect(Expect.QUERY)
    router.expect(Expect.SYNC)
    assert router.passthrough()
    router.ready()
    router.ready()
    assert router.idle
    router.expect(Expect.PARSE, forward=False)
    assert not router.passthrough()  # the proxy's own Parse: its answer must be swallowed
    router = ResponseRouter()
    router.expect(Expect.BIND)
    assert not router.passthrough()  # extended-protocol answers complete one by one
    router = ResponseRouter()
    router.expect(Expect.QUERY)
    router.answer(CLOSE_OK)
    assert not router.passthrough()  # a made-up answer waits for its place in line


def test_a_long_pipeline_is_answered_in_order_and_its_answered_places_do_not_pile_up() -> None:
    # A driver pipelining thousands of executions: the queue is read at its head while it grows at
    # its tail, 2,000 answers behind, and empties only at the end.
    router = ResponseRouter()
    sent = answered = 0

    def send() -> None:
        nonlocal sent
        router.expect(Expect.EXECUTE, forward=sent % 2 == 0)  # every other one the proxy's own
        sent += 1

    for _ in range(2000):
        send()
    while answered < 8000:
        if sent < 8000:
            send()
        done = m.frame(Backend.COMMAND_COMPLETE, f"SELECT {answered}\0".encode())
        assert route(router, done) == ([] if answered % 2 else [done])
        answered += 1
        assert len(router.pending()) == sent - answered
        assert len(router._queue) <= 2 * (sent - answered) + 1024  # what is answered is let go
    assert router.idle


def test_messages_the_proxy_only_waits_on_share_their_kinds_entry_and_others_get_their_own() -> None:
    router = ResponseRouter()
    first, second = router.expect(Expect.BIND), router.expect(Expect.BIND)
    assert first is second is Expect.BIND.plain
    assert router.expect(Expect.BIND, error=lambda raw: raw) is not first
    assert router.expect(Expect.BIND, forward=False) is not first
    assert router.expect(Expect.BIND, own=True) is not first
    # Shared places are still places: each is answered once, in order.
    router.expect(Expect.SYNC)
    answers = route(router, BIND_OK, BIND_OK, BIND_OK, BIND_OK, BIND_OK, READY)
    assert answers == [BIND_OK, BIND_OK, BIND_OK, BIND_OK, READY]  # forward=False hid one
    assert router.idle


def test_only_an_entry_of_its_own_can_be_waited_for() -> None:
    router = ResponseRouter()
    router.expect(Expect.QUERY)  # shared, answered first
    mine = router.expect(Expect.QUERY, own=True)
    router.route(READY[0], READY)
    assert router.waiting_for(mine)
    router.route(READY[0], READY)
    assert not router.waiting_for(mine)
    with pytest.raises(AssertionError):
        router.waiting_for(router.expect(Expect.QUERY))
