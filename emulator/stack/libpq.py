"""The kit's own PostgreSQL connections and programs, apart from the caller's PG* variables.

libpq takes every connection parameter that a connection leaves out from a PG* variable
(PGSSLROOTCERT, PGSSLMODE, PGHOSTADDR, PGOPTIONS, ...), and PostgreSQL's programs (psql,
pg_basebackup, the server's replication connections) do the same. A shell that sourced a running
stack's env file has them set for that stack: a second stack started there must not check its
own server against the first stack's CA, nor run its set-up with the caller's PGOPTIONS.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from psycopg.conninfo import make_conninfo

# What libpq does when the variable is not set, for every parameter it would read from one and
# that changes where or how the kit's own connections go (an empty value is libpq's "unset").
_OWN_DEFAULTS: Final = MappingProxyType(
    {
        "hostaddr": "",
        "options": "",
        "sslmode": "prefer",
        "sslcert": "",
        "sslkey": "",
        "sslrootcert": "",
        "sslcrl": "",
        "gssencmode": "disable",
        "target_session_attrs": "any",
    }
)
# libpq's variables (PGHOST, PGSSLMODE, ...), not the kit's own PG_BINDIR.
_LIBPQ_VARIABLE: Final = re.compile(r"PG[A-Z]")


def connect_kwargs(**params: Any) -> dict[str, Any]:
    """psycopg.connect()'s keywords for one of the kit's own connections: params over libpq's
    defaults, none of them taken from the environment."""
    return {**_OWN_DEFAULTS, **params}


def conninfo(**params: Any) -> str:
    """The same as a connection string (for a server's primary_conninfo, for instance)."""
    return make_conninfo("", **connect_kwargs(**params))


def program_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for PostgreSQL's programs: the kit's own, without libpq's variables, plus extra."""
    env = {name: value for name, value in os.environ.items() if not _LIBPQ_VARIABLE.match(name)}
    env.update(extra or {})
    return env
