"""A client that resets its connection halfway through a request, as boto3's does at exit."""

from __future__ import annotations

import socket
import struct
import threading

from emulator.wait import wait_until


def reset_halfway(host: str, port: int, first_lines: bytes, sentinel: bytes) -> None:
    """Send the first lines of a request, then reset the connection (SO_LINGER 0: an RST, not a FIN).

    The reset comes only once the server surely reads this connection: a whole request (sentinel)
    on a second connection has been answered, and the server accepts in order. Returns when the
    request threads of both connections have ended, so whatever they printed has been printed."""
    before = _request_threads()
    with socket.create_connection((host, port), timeout=10) as halfway:
        halfway.sendall(first_lines)
        with socket.create_connection((host, port), timeout=10) as whole:
            whole.sendall(sentinel)
            assert whole.recv(65536).startswith(b"HTTP/1."), "the sentinel request got no answer"
        halfway.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _wait_for_request_threads(before)


def send_and_close(host: str, port: int, request: bytes) -> None:
    """Send a whole request, read until the server closes; return when its request thread ended."""
    before = _request_threads()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        while sock.recv(65536):
            pass
    _wait_for_request_threads(before)


def _request_threads() -> set[threading.Thread]:
    # socketserver.ThreadingMixIn names each request's thread after process_request_thread; other
    # clients' kept-alive connections keep theirs, hence the set of those there before.
    return {thread for thread in threading.enumerate() if "process_request_thread" in thread.name}


def _wait_for_request_threads(before: set[threading.Thread]) -> None:
    wait_until(lambda: not _request_threads() - before, component="the server's request threads", timeout=30)
