"""KEY=VALUE files other shells source to reach the stack (`set -a; . FILE; set +a`)."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")
# The RDS Proxy emulator's log and counters, as the env file of `up` names them (report reads them).
PROXY_LOG_ENV, PROXY_STATS_ENV = "LOCAL_TWIN_PROXY_LOG", "LOCAL_TWIN_PROXY_STATS_URL"


def format_env(values: Mapping[str, str]) -> str:
    lines = []
    for key, value in values.items():
        if not _KEY.fullmatch(key):
            raise ValueError(f"not an environment variable name: {key!r}")
        # Quote only when needed so the file also reads well with docker --env-file and dotenv.
        rendered = value if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]*", value) else shlex.quote(value)
        lines.append(f"{key}={rendered}")
    return "\n".join(lines) + "\n"


def parse_env(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, raw = line.partition("=")
        parts = shlex.split(raw) if raw else [""]
        values[key.strip()] = parts[0] if parts else ""
    return values


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write atomically (readers never see half a file) and private (it holds a password)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(format_env(values))
    os.replace(tmp, path)
