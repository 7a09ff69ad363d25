"""A client's session parameters: what it chose, what a borrowed connection needs, what it is told."""

from __future__ import annotations

import pytest

from emulator.rdsproxy.protocol.parameters import SessionParameters

pytestmark = pytest.mark.unit

SERVER = {"application_name": "", "client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC"}


def test_what_the_client_did_not_choose_is_the_servers_default() -> None:
    parameters = SessionParameters({"application_name": "app"}, SERVER)
    assert parameters.wanted["application_name"] == "app"
    assert parameters.wanted["TimeZone"] == "UTC"
    assert parameters.seen["application_name"] == "app"


def test_a_connection_with_other_parameters_is_aligned_with_set_and_an_equal_one_is_not() -> None:
    parameters = SessionParameters({"TimeZone": "Europe/Paris", "extra_float_digits": "3"}, SERVER)
    sets = parameters.alignment(SERVER, {"extra_float_digits": "1"})
    assert sets == "SET TimeZone = 'Europe/Paris'; SET extra_float_digits = '3'"
    aligned = {**SERVER, "TimeZone": "Europe/Paris"}
    assert parameters.alignment(aligned, {"extra_float_digits": "3"}) is None


def test_the_servers_spelling_is_remembered_after_alignment() -> None:
    parameters = SessionParameters({"DateStyle": "ISO"}, SERVER)
    parameters.aligned({**SERVER, "DateStyle": "ISO, MDY"})
    assert parameters.wanted["DateStyle"] == "ISO, MDY"
    assert parameters.alignment(SERVER, {"extra_float_digits": "1"}) is None


def test_a_client_is_told_of_a_parameter_only_when_its_value_is_new_to_it() -> None:
    parameters = SessionParameters({}, SERVER)
    assert not parameters.reported("TimeZone", "UTC")
    assert parameters.reported("TimeZone", "Asia/Tokyo")
    assert not parameters.reported("TimeZone", "Asia/Tokyo")


@pytest.mark.parametrize("spelling", ["utf-8", "UTF8", "'utf-8'", "unicode"])
def test_client_encoding_is_compared_as_the_server_spells_it(spelling: str) -> None:
    parameters = SessionParameters({"client_encoding": spelling}, SERVER)
    assert parameters.wanted["client_encoding"] == "UTF8"
    assert parameters.alignment(SERVER, {"extra_float_digits": "1"}) is None


def test_a_client_that_chose_nothing_gets_the_servers_default_even_for_unreported_parameters() -> None:
    parameters = SessionParameters({}, SERVER, {"extra_float_digits": "1"})
    # A connection where another client chose extra_float_digits=0 is set back for this one.
    assert parameters.alignment(SERVER, {"extra_float_digits": "0"}) == "SET extra_float_digits = '1'"
    assert "extra_float_digits" not in parameters.seen  # PostgreSQL does not report it
