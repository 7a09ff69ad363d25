"""How a client reaches the twin's proxy or its PostgreSQL: libpq's connection parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ConnectionParams:
    """libpq's keywords: `psycopg.connect(**params.kwargs())`, `psycopg2.connect(params.conninfo())`,
    or PG* variables for psql."""

    host: str
    port: int
    dbname: str
    user: str
    # Through a proxy with IAM auth: a token (valid 15 minutes, as RDS's); otherwise the password.
    password: str
    # "require" over TLS (verify-full works with sslrootcert), "prefer" where the server has no TLS.
    sslmode: str
    # The twin's certificate authority, which signed the proxy's and PostgreSQL's certificates.
    sslrootcert: str | None = None

    def kwargs(self) -> dict[str, str | int]:
        return {name: value for name, value in asdict(self).items() if value is not None}

    def conninfo(self) -> str:
        """A libpq connection string (values quoted as libpq reads them)."""
        return " ".join(f"{name}={_quoted(str(value))}" for name, value in self.kwargs().items())


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
