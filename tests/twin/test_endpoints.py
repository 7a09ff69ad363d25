"""Connection parameters as libpq reads them, whatever an IAM token or a password holds."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from emulator.twin.endpoints import ConnectionParams

pytestmark = pytest.mark.unit


def test_the_conninfo_string_reads_back_as_the_parameters() -> None:
    token = "proxy:5432/?Action=connect&DBUser=app&X-Amz-Signature=a'b\\c d="
    params = ConnectionParams("127.0.0.1", 6432, "app", "app_user", token, "require", "/tmp/ca.pem")  # noqa: S108
    assert conninfo_to_dict(params.conninfo()) == {
        "host": "127.0.0.1",
        "port": "6432",
        "dbname": "app",
        "user": "app_user",
        "password": token,
        "sslmode": "require",
        "sslrootcert": "/tmp/ca.pem",  # noqa: S108
    }


def test_keyword_arguments_leave_out_what_is_not_set() -> None:
    params = ConnectionParams("127.0.0.1", 5432, "app", "app_user", "secret", "prefer")
    assert params.kwargs() == {
        "host": "127.0.0.1",
        "port": 5432,
        "dbname": "app",
        "user": "app_user",
        "password": "secret",
        "sslmode": "prefer",
    }
