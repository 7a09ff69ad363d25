"""The names follow the topology file: the writer after the DNS-like delay, the reader endpoint over
the readable replicas, each instance endpoint on its instance."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from emulator.wait import wait_until

from .conftest import Lab, RunningEndpoint, instance, server_port, topology

pytestmark = pytest.mark.integration


def test_the_writer_endpoint_follows_a_change_only_after_the_dns_ttl(
    lab: Lab, make_endpoint: Callable[..., RunningEndpoint]
) -> None:
    a, b = lab.servers["a"], lab.servers["b"]
    ttl = 3.0
    endpoint = make_endpoint(
        topology(
            "db-instance-1", instance("db-instance-1", a, "writer"), instance("db-instance-2", b, "reader")
        ),
        dns_ttl_seconds=ttl,
    )
    assert server_port(endpoint.writer_port) == a.port
    changed_at = time.time()
    # The old writer is still up here, so that connections that still go to it can say so.
    endpoint.change(
        topology(
            "db-instance-2",
            instance("db-instance-1", a, "fenced"),
            instance("db-instance-2", b, "writer"),
            generation=2,
            changed_at=changed_at,
        )
    )
    # Right after the change, new connections still reach the old writer, although the endpoint
    # has read the new topology (it reads the file on every new connection).
    assert server_port(endpoint.writer_port) == a.port
    assert time.time() - changed_at < ttl, "the check came too late to see the delay"
    assert "Topology generation 2: writer db-instance-2" in endpoint.process.log_path.read_text()
    wait_until(
        lambda: server_port(endpoint.writer_port) == b.port,
        component="the writer endpoint's move",
        timeout=ttl + 20,
    )
    assert time.time() - changed_at >= ttl
    assert "Topology generation 2 visible" in endpoint.process.log_path.read_text()
    # Instance endpoints never move.
    ports = endpoint.process.instance_ports
    assert server_port(ports["db-instance-1"]) == a.port
    assert server_port(ports["db-instance-2"]) == b.port


def test_the_reader_endpoint_spreads_new_connections_over_the_readable_replicas(
    lab: Lab, make_endpoint: Callable[..., RunningEndpoint]
) -> None:
    a, b, c = (lab.servers[x] for x in "abc")
    endpoint = make_endpoint(
        topology(
            "db-instance-1",
            instance("db-instance-1", a, "writer"),
            instance("db-instance-2", b, "reader"),
            instance("db-instance-3", c, "reader"),
        )
    )
    assert [server_port(endpoint.reader_port) for _ in range(6)] == [b.port, c.port] * 3
    assert server_port(endpoint.writer_port) == a.port
    assert {name: server_port(port) for name, port in endpoint.process.instance_ports.items()} == {
        "db-instance-1": a.port,
        "db-instance-2": b.port,
        "db-instance-3": c.port,
    }


def test_a_reader_endpoint_without_replicas_reaches_the_writer(
    lab: Lab, make_endpoint: Callable[..., RunningEndpoint]
) -> None:
    a, b = lab.servers["a"], lab.servers["b"]
    endpoint = make_endpoint(
        topology(
            "db-instance-1",
            instance("db-instance-1", a, "writer"),
            instance("db-instance-2", b, "fenced", readable=False),
        ),
        dns_ttl_seconds=0,
    )
    assert [server_port(endpoint.reader_port) for _ in range(2)] == [a.port, a.port]


def test_a_multi_az_instance_has_no_reader_endpoint(
    lab: Lab, make_endpoint: Callable[..., RunningEndpoint]
) -> None:
    a, b = lab.servers["a"], lab.servers["b"]
    endpoint = make_endpoint(
        topology(
            "db",
            instance("db", a, "writer"),
            instance("db-standby", b, "standby"),
            kind="multi-az",
        )
    )
    ready = json.loads(endpoint.process.ready_file.read_text())
    assert ready["reader"] is None
    assert set(ready["instances"]) == {"db", "db-standby"}
    assert ready["writer"] == endpoint.writer_port
    assert server_port(endpoint.writer_port) == a.port
