"""The stack's side of moto's process (emulator.stack.moto_server): start it, wait for its port, ask it
things, stop it.

Imports nothing heavy, so `python -m emulator up` can start moto (prestart) before it imports the
rest of the kit: moto's imports then run on the other core, beside the CLI's.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import queue
import socket
import subprocess
import sys
import threading
from typing import IO, Any

from emulator.net import LOOPBACK

COMPONENT = "AWS API emulator (moto server)"
INSTALL_HINT = "pip install 'moto[server]'"
# The region whose backends a prestarted moto warms up: the stack's default.
DEFAULT_REGION = "us-east-1"


class MotoProcessError(RuntimeError):
    """moto's process could not start, died, or refused a request: the message says which."""

    def __init__(self, problem: str, *, not_installed: bool = False) -> None:
        super().__init__(problem)
        self.not_installed = not_installed


class MotoProcess:
    """One `python -m emulator.stack.moto_server` child, talked to over its stdin and stdout."""

    def __init__(self, region: str) -> None:
        self.region = region
        # The listening socket is made here and handed to the child, so the endpoint is known before
        # moto answers (the stack hands it to processes it starts meanwhile) and no other program can
        # take the port while moto imports (a free port chosen here and bound there could be taken
        # in between). A client that connects early waits in the backlog until moto serves.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind((LOOPBACK, 0))
            listener.listen(128)
            self.endpoint_port: int = listener.getsockname()[1]
            # stdin is the child's lifeline: when this process ends, by any signal, the kernel closes
            # the pipe and the child exits. Its own session keeps the terminal's Ctrl+C away from it.
            self._popen = subprocess.Popen(
                [sys.executable, "-m", "emulator.stack.moto_server", region, str(listener.fileno())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
                text=True,
                pass_fds=(listener.fileno(),),
            )
        # Closed here: only the child listens, so once it is gone a client is refused, not left waiting.
        assert self._popen.stdin is not None
        assert self._popen.stdout is not None
        self._requests: IO[str] = self._popen.stdin
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._port: int | None = None
        self._reader = threading.Thread(
            target=self._read, args=(self._popen.stdout,), name="moto-answers", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def _read(self, answers: IO[str]) -> None:
        for line in answers:
            self._answers.put(json.loads(line))
        self._answers.put(None)

    def _next_answer(self, timeout: float) -> dict[str, Any]:
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise MotoProcessError(f"no answer after {timeout:.0f} s") from None
        if answer is None:
            self._answers.put(None)  # every later caller learns it too
            raise MotoProcessError(f"moto's process exited ({self._popen.wait()}); its errors are above")
        return answer

    def port(self, timeout: float = 60) -> int:
        """The port moto listens on (endpoint_port), once it answers (backends warmed up)."""
        with self._lock:
            if self._port is None:
                answer = self._next_answer(timeout)
                if "error" in answer:
                    raise MotoProcessError(str(answer["error"]), not_installed=bool(answer.get("import")))
                self._port = int(answer["port"])
            return self._port

    def request(self, op: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        """Ask the child (see moto_server._answer); raises MotoProcessError with its error."""
        self.port(timeout)
        with self._lock:
            try:
                self._requests.write(json.dumps({"op": op, **fields}) + "\n")
                self._requests.flush()
            except (BrokenPipeError, ValueError) as exc:
                raise MotoProcessError(f"moto's process is gone ({exc})") from exc
            answer = self._next_answer(timeout)
        if "error" in answer:
            raise MotoProcessError(f"{op}: {answer['error']}")
        return answer

    def stop(self, timeout: float = 5) -> None:
        # Its end of input: it exits. Closed also when it has died already (the pipe is still ours).
        with contextlib.suppress(BrokenPipeError):
            self._requests.close()
        if self._popen.poll() is None:
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        # The child is gone: its stdout has ended, and the reader with it.
        self._reader.join(timeout)
        if self._popen.stdout is not None and not self._reader.is_alive():
            self._popen.stdout.close()


_prestarted: MotoProcess | None = None


def prestart(region: str = DEFAULT_REGION) -> None:
    """Start moto now, for the first stack of this process to adopt (`up` calls it before its imports)."""
    global _prestarted  # noqa: PLW0603 - one prestarted moto per process
    if _prestarted is None:
        _prestarted = MotoProcess(region)
        # Not adopted (an error before the stack started, another command): stopped at exit.
        atexit.register(_prestarted.stop)


def adopt(region: str) -> MotoProcess | None:
    """The prestarted moto, once, when it warmed up this region's backends."""
    global _prestarted
    found, _prestarted = _prestarted, None
    if found is not None and found.region != region:
        found.stop()
        return None
    return found
