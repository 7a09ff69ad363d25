"""The orders service on the local twin: its function, schema and configuration as deployed, invoked
as Lambda invokes it, reaching PostgreSQL through RDS Proxy with an IAM token.

Every test here also fails if the function pins its RDS Proxy session (the kit's plugin checks).
"""

from __future__ import annotations

from emulator.twin import LocalTwin

FUNCTION = "orders-api"


def test_an_order_added_is_listed_after_the_seeded_one(twin: LocalTwin) -> None:
    added = twin.invoke(FUNCTION, {"action": "add", "item": "tea", "quantity": 2})
    assert added.succeeded, added.payload
    order = added.json()["added"]
    assert (order["item"], order["quantity"]) == ("tea", 2)
    listed = twin.invoke(FUNCTION, {"action": "list"}).json()["orders"]
    assert [item["item"] for item in listed][:1] == ["coffee"]
    assert order in listed


def test_an_unknown_action_fails_the_invocation_as_lambda_reports_it(twin: LocalTwin) -> None:
    failed = twin.invoke(FUNCTION, {"action": "refund"})
    assert failed.function_error == "Unhandled"
    assert failed.json()["errorType"] == "ValueError"
    assert failed.json()["errorMessage"] == "unknown action 'refund'"
