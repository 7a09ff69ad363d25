"""Protocol framing: any legal message, split or coalesced arbitrarily by TCP, comes out whole."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.rdsproxy.protocol import messages as m

pytestmark = pytest.mark.unit

frames_strategy = st.lists(
    st.tuples(st.sampled_from(b"QPBDESCHXdcfpZTDNAR1237"), st.binary(max_size=3000)), min_size=1, max_size=20
)


cuts_strategy = st.lists(st.integers(min_value=0, max_value=80000), max_size=30)


def _pieces(frames: list[tuple[int, bytes]], cuts: list[int]) -> list[bytes]:
    """The frames' bytes cut at arbitrary places, as TCP may deliver them."""
    stream = b"".join(m.frame(kind, body) for kind, body in frames)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[start:end] for start, end in itertools.pairwise(points)]


@given(frames=frames_strategy, cuts=cuts_strategy)
def test_frames_survive_any_split(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    reader = m.FrameReader()
    seen = []
    for piece in _pieces(frames, cuts):
        reader.feed(piece)
        seen += [(f.kind, f.body) for f in reader.frames()]
    assert seen == [(kind, body) for kind, body in frames]
    assert reader.pending_bytes() == 0


@given(frames=frames_strategy, cuts=cuts_strategy)
def test_bulk_taking_yields_the_same_messages_as_framing_one_by_one(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    reader = m.FrameReader()
    seen = []
    for piece in _pieces(frames, cuts):
        reader.feed(piece)
        chunk, starts = reader.take_complete()
        ends = [*starts[1:], len(chunk)] if starts else []
        seen += [(chunk[a], chunk[a + 5 : b]) for a, b in zip(starts, ends, strict=True)]
    assert seen == [(kind, body) for kind, body in frames]
    assert reader.pending_bytes() == 0


@given(frames=frames_strategy, cuts=cuts_strategy, ways=st.lists(st.booleans(), min_size=1))
def test_taking_one_by_one_and_in_bulk_from_the_same_reader_loses_and_repeats_nothing(
    frames: list[tuple[int, bytes]], cuts: list[int], ways: list[bool]
) -> None:
    # A database connection's reader is read both ways: one by one for the proxy's own exchanges,
    # in bulk for its borrowers' answers.
    reader = m.FrameReader()
    seen = []
    for piece, one_by_one in zip(_pieces(frames, cuts), itertools.cycle(ways), strict=False):
        reader.feed(piece)
        if one_by_one:
            while (frame := reader.next_frame()) is not None:
                seen.append((frame.kind, frame.body))
        else:
            chunk, starts = reader.take_complete()
            ends = [*starts[1:], len(chunk)] if starts else []
            seen += [(chunk[a], chunk[a + 5 : b]) for a, b in zip(starts, ends, strict=True)]
    seen += [(frame.kind, frame.body) for frame in reader.frames()]
    assert seen == [(kind, body) for kind, body in frames]
    assert reader.pending_bytes() == 0


def test_messages_that_came_in_one_read_with_nothing_before_them_are_not_copied() -> None:
    reader = m.FrameReader()
    alone = m.simple_query("SELECT 1")
    reader.feed(alone)
    frame = reader.next_frame()
    assert frame is not None
    assert frame.raw is alone
    several = m.simple_query("SELECT 1") + m.SYNC
    reader.feed(several)
    chunk, starts = reader.take_complete()
    assert chunk is several
    assert starts == [0, len(several) - 5]
    assert reader.pending_bytes() == 0


def test_bulk_taking_refuses_an_impossible_length() -> None:
    reader = m.FrameReader(max_message=100)
    reader.feed(b"D" + (1000).to_bytes(4, "big"))
    with pytest.raises(m.ProtocolViolation):
        reader.take_complete()


def test_a_consumer_that_stops_early_gets_the_next_frame_next_time() -> None:
    reader = m.FrameReader()
    reader.feed(m.simple_query("SELECT 1") + m.simple_query("SELECT 2"))
    first = next(iter(reader.frames()))
    second = next(iter(reader.frames()))
    assert (m.query_text(first.body), m.query_text(second.body)) == ("SELECT 1", "SELECT 2")


@pytest.mark.parametrize("length", [0, 3])
def test_an_impossible_length_is_a_protocol_violation(length: int) -> None:
    reader = m.FrameReader()
    reader.feed(b"Q" + length.to_bytes(4, "big"))
    with pytest.raises(m.ProtocolViolation, match="invalid message length"):
        list(reader.frames())


def test_a_message_over_the_limit_is_refused_before_it_is_buffered() -> None:
    reader = m.FrameReader(max_message=1000)
    reader.feed(b"Q" + (5000).to_bytes(4, "big"))
    with pytest.raises(m.ProtocolViolation, match="exceeds the 1000 byte limit"):
        list(reader.frames())


def test_startup_parameters_are_parsed() -> None:
    reader = m.StartupReader()
    reader.feed(m.startup_message({"user": "u", "database": "d", "application_name": "ä"}))
    packet = reader.packet()
    assert packet is not None
    assert packet.code == m.PROTOCOL_3_0
    assert packet.params == {"user": "u", "database": "d", "application_name": "ä"}


def test_a_startup_packet_without_its_terminator_is_malformed() -> None:
    body = m.PROTOCOL_3_0.to_bytes(4, "big") + b"user\0u\0"
    reader = m.StartupReader()
    reader.feed((len(body) + 4).to_bytes(4, "big") + body)
    with pytest.raises(m.ProtocolViolation, match="malformed startup packet"):
        reader.packet()


def test_error_fields_round_trip() -> None:
    raw = m.error_response("FATAL", "08000", "Timed-out waiting to acquire database connection.", D="detail")
    fields = m.parse_message_fields(raw[5:])
    assert fields == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "08000",
        "M": "Timed-out waiting to acquire database connection.",
        "D": "detail",
    }


def test_a_bind_is_renamed_without_touching_its_parameters() -> None:
    body = b"portal\0client_name\0" + b"\x00\x01\x00\x01\x00\x01\x00\x00\x00\x04\x00\x00\x00\x2a\x00\x00"
    portal, name, start, rest = m.bind_statement(body)
    assert (portal, name, body[start:rest]) == ("portal", "client_name", b"client_name\0")
    renamed = m.rename_bind(body, "rdsproxy_7", start, rest)
    assert renamed == m.frame(m.Frontend.BIND, b"portal\0rdsproxy_7\0" + body[rest:])
    assert m.bind_message(b"portal\0rdsproxy_7\0", body[rest:]) == renamed  # (a repeated Bind's way)


@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("size", [0, 1, 127, 128, 129, 100_000])
def test_a_string_is_read_to_its_terminator_whatever_its_length(offset: int, size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    body = b"\0" * offset + text.encode() + b"\0tail\0"
    assert m.read_cstring(body, offset) == (text, offset + len(text.encode()) + 1)


@pytest.mark.parametrize("body", [b"abc", b"\0\0abc", b"\0\0" + b"x" * 300])
def test_a_string_without_its_terminator_is_a_protocol_violation(body: bytes) -> None:
    offset = 2 if body.startswith(b"\0\0") else 0
    with pytest.raises(m.ProtocolViolation, match="unterminated string"):
        m.read_cstring(body, offset)


def test_a_string_that_is_not_utf8_is_read_with_replacement_characters() -> None:
    assert m.read_cstring(b"\0a\xffb\0", 1) == ("a\ufffdb", 5)


def test_a_parse_message_seen_before_gives_the_same_fields_without_being_decoded_again() -> None:
    body = b"s1\0SELECT $1::text\0\0\x01\0\0\0\x19"
    first = m.parse_fields(m.Frame(m.frame(m.Frontend.PARSE, body)))
    assert first == m.parse_parse(body) == ("s1", "SELECT $1::text", b"\0\x01\0\0\0\x19")
    again = m.parse_fields(m.Frame(m.frame(m.Frontend.PARSE, body)))  # equal bytes, another object
    assert again == first
    assert again[1] is first[1]  # the very text decoded the first time (compiled, the tuple is new)


def test_a_malformed_parse_message_is_refused_every_time() -> None:
    unterminated = m.Frame(m.frame(m.Frontend.PARSE, b"s1\0SELECT 1"))
    for _ in range(2):
        with pytest.raises(m.ProtocolViolation):
            m.parse_fields(unterminated)
