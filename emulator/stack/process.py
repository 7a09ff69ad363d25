"""Child processes of the local stack: started in their own process group, logged to a file,
run as an unprivileged user when the kit runs as root, and always stopped: by the kit, or, should
the kit's process be killed (SIGKILL gives it no say), by the kernel.

The kernel's part is Linux's parent-death signal (PR_SET_PDEATHSIG), set by util-linux's `setpriv
--pdeathsig` in front of the server's own command: when the kit's process ends, each server gets its
usual stop signal, as from the kit. It fires when the *thread* that started the server ends, so every
server is started from one thread that lasts as long as the process. Without setpriv (not Linux) a
killed kit leaves its servers running, as before. Costs nothing: no watcher process, no memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from emulator.errors import ComponentError
from emulator.wait import wait_until

# Every server is started from this thread: it lasts as long as the process (its executor is joined
# at interpreter exit), so a server's parent-death signal fires when the process ends, not before.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-twin-spawner")
_SETPRIV = shutil.which("setpriv")

# The servers this Python process started, oldest first, with their logs' ends kept once they stop
# (their stack directory goes): the kit's own test suite shows what each wrote during a failed test.
# Every running one stays; of the stopped ones, the latest _STOPPED_KEPT.
STARTED: list[ManagedProcess] = []
_STOPPED_KEPT = 32
_KEPT_LOG_BYTES = 64 * 1024

# Users tried, in order, when the kit runs as root: PostgreSQL and PgBouncer both refuse root.
_SERVICE_USERS = ("postgres", "nobody")


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int


def service_user() -> ServiceUser | None:
    """The unprivileged user to run servers as, or None when the kit is not root."""
    if os.geteuid() != 0:
        return None
    for name in _SERVICE_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ServiceUser(name, entry.pw_uid, entry.pw_gid)
    raise ComponentError(
        "service user",
        "running as root, and neither a 'postgres' nor a 'nobody' user exists to run servers as",
        "create one: useradd --system postgres",
    )


def hand_over(path: Path, user: ServiceUser | None) -> None:
    """Give a file or directory tree the kit created to the service user."""
    if user is None:
        return
    os.chown(path, user.uid, user.gid)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), user.uid, user.gid)


class ManagedProcess:
    """One server process with a log file, a stop signal and a bounded shutdown."""

    def __init__(
        self,
        component: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        user: ServiceUser | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.component = component
        self.argv = list(argv)
        self.log_path = log_path
        self.user = user
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_signal = stop_signal
        self._popen: subprocess.Popen[bytes] | None = None
        # The log's size and its last bytes when the process stopped (see log_from).
        self._kept_log: tuple[int, bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._popen is not None, f"{self.component} was not started"
        return self._popen.pid

    def start(self) -> None:
        log = self.log_path.open("ab")
        hand_over(self.log_path, self.user)
        try:
            self._popen = _SPAWNER.submit(self._spawn, log).result()
        except OSError as exc:
            raise ComponentError(self.component, f"could not start {self.argv[0]}: {exc}") from exc
        finally:
            log.close()
        self._kept_log = None
        if self in STARTED:
            STARTED.remove(self)
        STARTED.append(self)
        stopped = [process for process in STARTED if process._kept_log is not None]
        for process in stopped[: max(0, len(stopped) - _STOPPED_KEPT)]:
            STARTED.remove(process)

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        # A missing program is Popen's FileNotFoundError as without setpriv, not setpriv's exit status.
        if shutil.which(self.argv[0], path=os.pathsep.join(os.get_exec_path(self.env))) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.argv[0])
        return subprocess.Popen(
            with_death_signal(self.argv, self.stop_signal),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            user=self.user.uid if self.user else None,
            group=self.user.gid if self.user else None,
            extra_groups=[] if self.user else None,
        )

    def wait_ready(self, probe: Callable[[], bool], *, timeout: float, what: str = "") -> None:
        """Wait until probe() says yes; fail at once, with the log's end, if the process dies first."""
        wait_until(
            probe,
            component=f"{self.component}{what}",
            timeout=timeout,
            alive=self.exit_reason,
            hint=f"its log is {self.log_path}",
        )

    def exit_reason(self) -> str | None:
        """None while running; otherwise the exit status and the end of the log."""
        if self._popen is None or self._popen.poll() is None:
            return None
        return f"exit status {self._popen.returncode}\n{self.log_tail()}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def log_size(self) -> int:
        """How long the log is now (an offset for log_from)."""
        if self._kept_log is not None:
            return self._kept_log[0]
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_from(self, offset: int) -> str:
        """What the log holds from offset on; once the process has stopped, as far as the end kept then
        reaches (its directory may be gone)."""
        if self._kept_log is not None:
            size, end = self._kept_log
            data = end[max(0, len(end) - (size - offset)) :]
        else:
            try:
                with self.log_path.open("rb") as log:
                    log.seek(offset)
                    data = log.read()
            except OSError:
                return ""
        return data.decode(errors="replace")

    def _keep_log(self) -> None:
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(0, size - _KEPT_LOG_BYTES))
                self._kept_log = (size, log.read())
        except OSError:
            self._kept_log = (0, b"")

    def stop(self, timeout: float = 10.0) -> None:
        """Send the stop signal to the whole process group, then SIGKILL at the deadline."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            if popen is not None and self._kept_log is None:
                self._keep_log()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, self.stop_signal)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(5)
        # Children that ignored the group signal (none expected) must not outlive the stack.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                os.killpg(popen.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
        self._keep_log()


def with_death_signal(argv: Sequence[str], stop_signal: signal.Signals) -> list[str]:
    """argv, run so that the kernel sends it stop_signal when the kit's process ends (setpriv sets
    the signal after Popen has switched to the service user, which would clear it, then execs argv:
    the server keeps the pid Popen knows)."""
    if _SETPRIV is None:
        return list(argv)
    return [_SETPRIV, f"--pdeathsig={stop_signal.name.removeprefix('SIG')}", "--", *argv]


def run_checked(
    component: str,
    argv: Sequence[str],
    *,
    user: ServiceUser | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> str:
    """Run a short setup command (initdb, ...) and fail with its output when it fails."""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ComponentError(component, f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise ComponentError(component, f"{' '.join(argv[:2])} exited with {done.returncode}:\n{output}")
    return done.stdout
