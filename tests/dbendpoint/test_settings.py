"""The endpoint's settings file."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.dbendpoint.gate import PassThroughGate, make_gate
from emulator.dbendpoint.settings import DEFAULT_DNS_TTL_SECONDS, EndpointSettings

pytestmark = pytest.mark.unit


def test_the_dns_delay_defaults_to_auroras_ttl_of_five_seconds() -> None:
    assert EndpointSettings(topology_file="t.json").dns_ttl_seconds == DEFAULT_DNS_TTL_SECONDS == 5.0


def test_settings_round_trip_through_their_file(tmp_path: Path) -> None:
    settings = EndpointSettings(topology_file="t.json", dns_ttl_seconds=0.5, instance_ports={"db-1": 6000})
    path = tmp_path / "settings.json"
    path.write_text(settings.to_json())
    assert EndpointSettings.from_file(path) == settings


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({}, "topology_file is required"),
        ({"topology_file": "t", "dns_ttl_seconds": -1}, "dns_ttl_seconds must be 0 or more"),
        ({"topology_file": "t", "tls_cert_file": "c.pem"}, "tls_cert_file and tls_key_file go together"),
        ({"topology_file": "t", "writer_port": 70000}, "ports must be between 0 and 65535"),
        ({"topology_file": "t", "reader_balancing": "least"}, "reader_balancing is round-robin or random"),
        ({"topology_file": "t", "dns_ttl": 5}, "unknown database endpoint settings: dns_ttl"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(data: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        EndpointSettings.from_mapping(data)


def test_without_iam_the_gate_passes_the_startup_packet_through() -> None:
    assert isinstance(make_gate(EndpointSettings(topology_file="t")), PassThroughGate)
