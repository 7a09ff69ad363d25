"""What fails a test on the twin, and what its message says."""

from __future__ import annotations

import ast

import pytest

from emulator.pytest_plugin.verdicts import cap_failure, pin_failure, unexpected_pins
from emulator.rdsproxy.protocol.pinning import REASON_PARSE, REASON_TOO_LONG
from emulator.twin.pins import Pin

pytestmark = pytest.mark.unit

SETTINGS_REASON = (
    "SQL changed session settings that the proxy doesn't track. Consider moving session configuration to the "
    "proxy's initialization query."
)
SET_TIMEOUT = Pin(12, 3, SETTINGS_REASON, "set statement_timeout = $1", "2026-01-01T00:00:00.000Z")
TEMP_TABLE = Pin(13, 4, SETTINGS_REASON, "create temp table t (id int)", "2026-01-01T00:00:01.000Z")
TOO_LONG = Pin(14, 5, REASON_TOO_LONG, None, "2026-01-01T00:00:02.000Z")
PARSED = Pin(15, 6, REASON_PARSE, None, "2026-01-01T00:00:03.000Z")


def test_without_a_declaration_every_pin_is_unexpected() -> None:
    assert unexpected_pins([SET_TIMEOUT, TOO_LONG], None) == [SET_TIMEOUT, TOO_LONG]


def test_a_bare_declaration_allows_any_pin() -> None:
    assert unexpected_pins([SET_TIMEOUT, TOO_LONG], ()) == []


def test_patterns_allow_the_pins_whose_digest_or_reason_they_match_in_any_case() -> None:
    pins = [SET_TIMEOUT, TEMP_TABLE, TOO_LONG]
    assert unexpected_pins(pins, ["SET statement_timeout"]) == [TEMP_TABLE, TOO_LONG]
    assert unexpected_pins(pins, ["temp table", "16384 byte"]) == [SET_TIMEOUT]


def test_the_failure_names_each_pin_s_reason_and_digest_and_how_to_declare_it() -> None:
    message = pin_failure([SET_TIMEOUT], "twin")
    assert message.splitlines()[:3] == [
        "RDS Proxy pinned 1 session during this test (twin):",
        f"  clientConnection=12 dbConnection=3: {SETTINGS_REASON}",
        '    Digest: "set statement_timeout = $1"',
    ]
    assert message.splitlines()[-1] == (
        'If the test means to pin, mark it: @pytest.mark.twin_allow_pin("set statement_timeout")'
    )


def _suggested_patterns(message: str) -> list[str]:
    """The patterns of the marker a failure message suggests, as pytest would pass them."""
    prefix = "If the test means to pin, mark it: @pytest.mark."
    last = message.splitlines()[-1]
    assert last.startswith(prefix), message
    call = ast.parse(last.removeprefix(prefix), mode="eval").body
    assert isinstance(call, ast.Call)
    return [ast.literal_eval(argument) for argument in call.args]


@pytest.mark.parametrize(
    "pin", [SET_TIMEOUT, TEMP_TABLE, TOO_LONG, PARSED], ids=["set", "temp-table", "over-16-kb", "parse"]
)
def test_the_suggested_marker_allows_that_pin_and_no_other(pin: Pin) -> None:
    """With or without a digest (a statement over 16 KB has none), the suggestion is a pattern:
    an empty marker would allow every pin."""
    patterns = _suggested_patterns(pin_failure([pin], "twin"))
    assert patterns
    others = [other for other in (SET_TIMEOUT, TEMP_TABLE, TOO_LONG, PARSED) if other is not pin]
    assert unexpected_pins([pin, *others], patterns) == others


def test_a_statement_over_16_kb_suggests_the_reason_s_byte_limit() -> None:
    message = pin_failure([TOO_LONG], "twin")
    assert message.splitlines()[-1] == (
        'If the test means to pin, mark it: @pytest.mark.twin_allow_pin("16384 byte limit")'
    )


def test_pins_of_different_statements_suggest_declaring_any_pin() -> None:
    message = pin_failure([SET_TIMEOUT, TEMP_TABLE, TOO_LONG], "small_pool_twin")
    assert message.startswith("RDS Proxy pinned 3 sessions during this test (small_pool_twin):")
    assert f"clientConnection=14 dbConnection=5: {REASON_TOO_LONG}" in message
    assert message.endswith("@pytest.mark.twin_allow_pin()")


def test_connections_within_the_cap_pass() -> None:
    assert cap_failure(cap=5, proxy_peak=5, database_peak=5) is None


def test_connections_that_bypassed_the_proxy_over_the_cap_fail_and_say_where_to_look() -> None:
    message = cap_failure(cap=5, proxy_peak=2, database_peak=9)
    assert message is not None
    assert message.startswith(
        "The database served up to 9 connection(s) of the application's role during this test; the proxy "
        "opened up to 2, and its cap (MaxDatabaseConnectionsAllowed) is 5."
    )
    assert "did not come through it" in message
