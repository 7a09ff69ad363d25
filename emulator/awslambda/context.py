"""The context object Lambda hands a handler, with the attributes handlers commonly read."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class LambdaContext:
    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    # time.monotonic() at which the invocation times out.
    _deadline: float

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
