"""Loopback ports: everything the kit starts listens on 127.0.0.1 only."""

from __future__ import annotations

import functools
import sys
from http.server import ThreadingHTTPServer
from typing import Any

import port_for

LOOPBACK = "127.0.0.1"


@functools.cache
def _good_ports() -> frozenset[int]:
    # port-for's list (IANA-unassigned, outside the ephemeral range) takes ~10 ms to build.
    return frozenset(port_for.available_good_ports())


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now, outside the ephemeral range.

    The kit writes a server's port into its configuration before the server binds it; a port from
    the ephemeral range (what binding port 0 gives) can be taken in between as the source port of
    any outgoing connection on the machine, which a port outside it never is.
    """
    return port_for.select_random(set(_good_ports()))


class QuietHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that says nothing when a client goes away mid-request.

    A client that resets or drops its connection (boto3's, at interpreter exit, with a kept-alive
    connection) is normal: socketserver's default prints "Exception occurred during processing of
    request" and a traceback into the user's terminal for it. Every other error is still printed.
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # reset, broken pipe, aborted
            return
        super().handle_error(request, client_address)
