"""moto's process serves one request at a time: its backends are not made for concurrent use."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from emulator.stack.moto_server import one_at_a_time


def test_requests_to_moto_are_served_one_at_a_time_whatever_the_server_threads() -> None:
    inside = 0
    most = 0
    count = threading.Lock()

    def backend(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal inside, most
        with count:
            inside += 1
            most = max(most, inside)
        time.sleep(0.01)  # a request long enough for the others to arrive meanwhile
        with count:
            inside -= 1
        start_response("200 OK", [])
        return [b"ok"]

    serve = one_at_a_time(backend)
    with ThreadPoolExecutor(8) as threads:
        bodies = list(threads.map(lambda _: serve({}, lambda *args: None), range(16)))
    assert bodies == [[b"ok"]] * 16
    assert most == 1
