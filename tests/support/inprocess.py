"""Lambda execution environments, in-process.

Each environment imports its own copy of the handler module (its Init phase), so module-scope
state (the database connection) is per environment, exactly as in Lambda, and serves one
invocation at a time. Shutting an environment down closes the connections it holds, as Lambda
does when it recycles one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from emulator.awslambda.context import LambdaContext
from emulator.paths import HANDLER_FILE

_ids = itertools.count(1)


class InProcessEnvironment:
    """One execution environment: its own module instance of the handler, one invocation at a time."""

    def __init__(
        self,
        handler_file: Path = HANDLER_FILE,
        handler_name: str = "handler",
        *,
        function_name: str = "local-twin-handler",
        memory_mb: int = 128,
        timeout_seconds: float = 30,
    ) -> None:
        self.id = next(_ids)
        self.function_name = function_name
        self.memory_mb = memory_mb
        self.timeout_seconds = timeout_seconds
        spec = importlib.util.spec_from_file_location(f"lambda_environment_{self.id}", handler_file)
        if spec is None or spec.loader is None:
            raise FileNotFoundError(f"no handler module at {handler_file}")
        self.module: types.ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)  # the Init phase
        self._handler: Callable[[Any, LambdaContext], Any] = getattr(self.module, handler_name)
        self._busy = threading.Lock()

    def invoke(self, event: Any) -> Any:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"environment {self.id} is already serving an invocation")
        try:
            request_id = str(uuid.uuid4())
            context = LambdaContext(
                function_name=self.function_name,
                function_version="$LATEST",
                invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}",
                memory_limit_in_mb=self.memory_mb,
                aws_request_id=request_id,
                log_group_name=f"/aws/lambda/{self.function_name}",
                log_stream_name=f"local-twin/in-process-{self.id}",
                _deadline=time.monotonic() + self.timeout_seconds,
            )
            return self._handler(event, context)
        finally:
            self._busy.release()

    def shutdown(self) -> None:
        """Close every database connection the module holds, as the process exit would."""
        for value in list(vars(self.module).values()):
            # Duck-typed DB-API connections: whatever has both cursor() and close().
            if isinstance(value, type) or not callable(getattr(value, "cursor", None)):
                continue
            close = getattr(value, "close", None)
            if callable(close):
                close()


@contextlib.contextmanager
def function_environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Set a function's environment variables for in-process environments, then restore os.environ.

    In-process environments share the process environment, so one function's variables are in
    force at a time: run bursts for different configurations one after the other.
    """
    saved = dict(os.environ)
    os.environ.update(variables)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
