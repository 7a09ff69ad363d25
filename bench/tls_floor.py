"""What one TLS connection costs before any proxy code: `python -m bench.tls_floor CERT KEY CA [N]`.

A TLS client's memory in the proxy is OpenSSL's state for the connection plus the event loop's and
the proxy's own objects. This child measures the first part alone: N server-side ssl.SSLObjects
over memory BIOs, each after a full handshake (TLS 1.3, the proxy's certificate) and one exchange
of data each way, kept alive while the client side of each is freed. It prints one JSON object,
{"kb_per_connection": ..., "openssl": ...}: the resident memory they added, per connection. A
child of its own, so nothing else in the process moves the figure.
"""

from __future__ import annotations

import contextlib
import gc
import json
import ssl
import sys
from typing import Any

import psutil

WARM_UP = 50


def _pump(source: ssl.MemoryBIO, sink: ssl.MemoryBIO) -> None:
    data = source.read()
    if data:
        sink.write(data)


def _connection(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[Any, ...]:
    """A handshaken server-side SSLObject with its BIOs (what a proxy keeps per TLS client)."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    client_side = client.wrap_bio(client_in, client_out, server_hostname="localhost")
    for _ in range(10):
        for end in (client_side, server_side):
            with contextlib.suppress(ssl.SSLWantReadError):  # each end waits for the other's bytes
                end.do_handshake()
        _pump(client_out, server_in)
        _pump(server_out, client_in)
    client_side.write(b"Q" * 100)
    _pump(client_out, server_in)
    server_side.read(1024)
    server_side.write(b"R" * 100)
    _pump(server_out, client_in)
    client_side.read(1024)
    return server_side, server_in, server_out


def main() -> None:
    cert, key, ca = sys.argv[1:4]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(ca)
    kept = [_connection(server, client) for _ in range(WARM_UP)]
    gc.collect()
    before = psutil.Process().memory_info().rss
    kept += [_connection(server, client) for _ in range(count)]
    gc.collect()
    after = psutil.Process().memory_info().rss
    print(json.dumps({"kb_per_connection": (after - before) / 1024 / count, "openssl": ssl.OPENSSL_VERSION}))


if __name__ == "__main__":
    main()
