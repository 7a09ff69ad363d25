"""Lambda's API as boto3 users call it against the twin: reading functions, unknown names, log tails."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator.awslambda.function import FunctionConfig, LambdaFunction
from emulator.awslambda.invoke_api import InvokeApi
from tests.support.resets import reset_halfway, send_and_close

from .clients import lambda_client

pytestmark = pytest.mark.integration

HANDLER = """\
import os
print("init of", os.environ["AWS_LAMBDA_FUNCTION_NAME"])

def handler(event, context):
    print("event", event.get("n"))
    if event.get("shout"):
        print("x" * event["shout"])
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"n": event.get("n"), "greeting": os.environ["GREETING"]}
"""


@pytest.fixture(scope="module")
def code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("code")
    (directory / "app.py").write_text(HANDLER)
    return directory


@pytest.fixture(scope="module")
def client(code: Path) -> Iterator[Any]:
    config = FunctionConfig(
        name="greeter",
        handler="app.handler",
        code_dir=code,
        environment={"GREETING": "hello"},
        timeout_seconds=7,
        memory_mb=512,
        reserved_concurrency=3,
    )
    with LambdaFunction(config) as function:
        api = InvokeApi({config.name: function})
        api.start()
        try:
            yield lambda_client(api.endpoint_url)
        finally:
            api.stop()


def test_get_function_configuration_describes_the_function_the_twin_runs(client: Any) -> None:
    config = client.get_function_configuration(FunctionName="greeter")
    assert config["FunctionName"] == "greeter"
    assert config["FunctionArn"] == "arn:aws:lambda:us-east-1:123456789012:function:greeter"
    assert (config["Handler"], config["Timeout"], config["MemorySize"]) == ("app.handler", 7, 512)
    assert config["Environment"]["Variables"]["GREETING"] == "hello"
    assert config["State"] == "Active"
    # The Python it runs on (the kit's own), unless its function declares another.
    assert config["Runtime"] == f"python{sys.version_info.major}.{sys.version_info.minor}"


def test_get_function_gives_its_configuration_code_and_reserved_concurrency(client: Any) -> None:
    answer = client.get_function(FunctionName="arn:aws:lambda:us-east-1:123456789012:function:greeter")
    assert answer["Configuration"]["FunctionName"] == "greeter"
    assert answer["Code"]["RepositoryType"] == "S3"
    assert answer["Concurrency"] == {"ReservedConcurrentExecutions": 3}


def test_list_functions_lists_the_twin_s_functions(client: Any) -> None:
    assert [f["FunctionName"] for f in client.list_functions()["Functions"]] == ["greeter"]


@pytest.mark.parametrize("call", ["invoke", "get_function", "get_function_configuration"])
def test_an_unknown_function_is_lambda_s_resource_not_found(client: Any, call: str) -> None:
    with pytest.raises(client.exceptions.ResourceNotFoundException) as caught:
        getattr(client, call)(FunctionName="no-such-function")
    assert caught.value.response["Error"]["Message"] == (
        "Function not found: arn:aws:lambda:us-east-1:123456789012:function:no-such-function"
    )


def test_log_type_tail_returns_the_invocation_s_log(client: Any) -> None:
    answer = client.invoke(FunctionName="greeter", Payload=json.dumps({"n": 41}), LogType="Tail")
    assert json.loads(answer["Payload"].read()) == {"n": 41, "greeting": "hello"}
    log = base64.b64decode(answer["LogResult"]).decode()
    lines = log.splitlines()
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    assert f"START RequestId: {request_id} Version: $LATEST" in lines
    assert "event 41" in lines
    assert lines[-2] == f"END RequestId: {request_id}"
    assert lines[-1].startswith(f"REPORT RequestId: {request_id}\tDuration: ")
    assert "Memory Size: 512 MB" in lines[-1]


def test_the_tail_is_the_last_4_kb_and_a_function_error_is_in_it(client: Any) -> None:
    answer = client.invoke(FunctionName="greeter", Payload=json.dumps({"shout": 10_000}), LogType="Tail")
    log = base64.b64decode(answer["LogResult"])
    assert len(log) == 4096
    assert log.decode().endswith("MB\n")

    failed = client.invoke(FunctionName="greeter", Payload=json.dumps({"fail": True}), LogType="Tail")
    assert failed["FunctionError"] == "Unhandled"
    assert "[ERROR] ValueError: asked to fail" in base64.b64decode(failed["LogResult"]).decode()


def test_without_log_type_there_is_no_log_result(client: Any) -> None:
    answer = client.invoke(FunctionName="greeter", Payload=b"{}")
    assert "LogResult" not in answer


def test_a_client_that_resets_its_connection_is_not_reported_and_other_errors_are(
    client: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """boto3 resets a kept-alive connection at interpreter exit: socketserver printed a traceback
    ("ConnectionResetError: Connection reset by peer") into `up`'s output for it."""
    host, port = client.meta.endpoint_url.removeprefix("http://").split(":")
    invoke = b"POST /2015-03-31/functions/greeter/invocations HTTP/1.1\r\nHost: lambda\r\n"
    capfd.readouterr()
    reset_halfway(host, int(port), invoke, b"GET /2015-03-31/functions/ HTTP/1.1\r\nHost: lambda\r\n\r\n")
    assert capfd.readouterr().err == ""
    # A request the server cannot read is still reported.
    send_and_close(host, int(port), invoke + b"Content-Length: many\r\n\r\n")
    err = capfd.readouterr().err
    assert "Exception occurred during processing of request" in err
    assert "ValueError" in err
