"""Loopback ports: everything the kit starts listens on 127.0.0.1 only."""

from __future__ import annotations

import socket
import sys
from http.server import ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


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
