"""An orders service on AWS Lambda: PostgreSQL through RDS Proxy with psycopg 3 and an IAM token.

A user's function, written without the kit in mind: it reads DB_HOST/DB_PORT/DB_NAME/DB_USER,
connects once per execution environment with a fresh IAM auth token and TLS, and reuses the
connection while the environment is warm.

Events: {"action": "add", "item": "tea", "quantity": 2} -> the new order
        {"action": "list"}                              -> every order
"""

from __future__ import annotations

import os
from typing import Any

import boto3
import psycopg
from psycopg.rows import dict_row

_rds = boto3.client("rds", region_name=os.environ.get("AWS_REGION", "us-east-1"))
_connection: psycopg.Connection[Any] | None = None


def _connect() -> psycopg.Connection[Any]:
    host, port, user = os.environ["DB_HOST"], int(os.environ.get("DB_PORT", "5432")), os.environ["DB_USER"]
    token = _rds.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user)
    return psycopg.connect(
        host=host,
        port=port,
        dbname=os.environ["DB_NAME"],
        user=user,
        password=token,
        sslmode="require",
        autocommit=True,
        row_factory=dict_row,
    )


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _connection  # noqa: PLW0603 - one connection per execution environment, reused while warm
    if _connection is None or _connection.closed:
        _connection = _connect()
    action = event.get("action", "list")
    if action == "add":
        order = _connection.execute(
            "INSERT INTO orders (item, quantity) VALUES (%s, %s) RETURNING id, item, quantity",
            (event["item"], int(event.get("quantity", 1))),
        ).fetchone()
        print(f"added order {order['id']}")
        return {"service": "orders", "added": order}
    if action == "list":
        rows = _connection.execute("SELECT id, item, quantity FROM orders ORDER BY id").fetchall()
        return {"service": "orders", "orders": rows}
    raise ValueError(f"unknown action {action!r}")
