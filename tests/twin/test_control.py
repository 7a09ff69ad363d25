"""The control endpoint of a running `up`: what it prints when its clients misbehave."""

from __future__ import annotations

import urllib.parse

import pytest

from emulator.stack.cluster import FailoverReport
from emulator.twin.control import ControlServer, running_pid
from tests.support.resets import reset_halfway, send_and_close

pytestmark = pytest.mark.integration


class _Broken:
    """A twin whose failover fails in a way nobody foresaw (not a ComponentError)."""

    def failover(self, to: str | None = None) -> FailoverReport:
        raise RuntimeError("something nobody foresaw")


def test_a_client_that_resets_its_connection_is_not_reported_and_other_errors_are(
    capfd: pytest.CaptureFixture[str],
) -> None:
    server = ControlServer(_Broken())
    server.start()
    try:
        url = urllib.parse.urlsplit(server.url)
        host, port = url.hostname or "", url.port or 0
        capfd.readouterr()
        post = f"POST {url.path}/failover HTTP/1.0\r\nContent-Length: 2\r\n".encode()
        reset_halfway(host, port, post, f"GET {url.path} HTTP/1.0\r\n\r\n".encode())
        assert capfd.readouterr().err == ""
        assert running_pid(server.url) is not None
        send_and_close(host, port, post + b"\r\n{}")
        err = capfd.readouterr().err
        assert "Exception occurred during processing of request" in err
        assert "RuntimeError: something nobody foresaw" in err
    finally:
        server.stop()
