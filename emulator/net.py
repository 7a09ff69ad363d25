"""Loopback ports: everything the kit starts listens on 127.0.0.1 only."""

from __future__ import annotations

import functools
import random
import sys
from http.server import ThreadingHTTPServer
from typing import Any

import port_for

LOOPBACK = "127.0.0.1"


# Candidates tried before giving up, as port-for's own select_random does.
_TRIES = 100


@functools.cache
def _good_ranges() -> tuple[tuple[int, int], ...]:
    # port-for's ranges of IANA-unassigned ports outside the ephemeral range (inclusive; about 10 ms
    # to build), kept as a few hundred pairs: the set of every such port that select_random makes
    # kept about 2 MB of the `up` process resident for its whole life.
    return tuple(port_for.good_port_ranges())


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now, outside the ephemeral range.

    The kit writes a server's port into its configuration before the server binds it; a port from
    the ephemeral range (what binding port 0 gives) can be taken in between as the source port of
    any outgoing connection on the machine, which a port outside it never is.
    """
    ranges = _good_ranges()
    widths = [high - low + 1 for low, high in ranges]
    for low, high in random.choices(ranges, widths, k=_TRIES) if ranges else ():  # noqa: S311 - not secret
        port = random.randint(low, high)  # noqa: S311
        if not port_for.port_is_used(port):
            return port
    raise port_for.PortForException("Can't select a port")


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
