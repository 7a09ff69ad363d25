"""The local twin as one object: the stack, the Lambda functions that run on it and Lambda's Invoke API.

`with LocalTwin(StackConfig()) as twin:` starts PostgreSQL, the AWS API emulator and the proxy, then the
functions (by default the kit's handler, or the function Terraform applied) behind the Invoke API;
leaving the block stops everything, newest first. `python -m emulator up` and the stage's local
target are built on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import boto3
from botocore.config import Config

from emulator.awslambda.function import FunctionConfig, LambdaFunction
from emulator.awslambda.invoke_api import InvokeApi
from emulator.lifecycle import Started
from emulator.stack.embedded import EmbeddedStack, StackConfig

FunctionsFor = Callable[[EmbeddedStack], Sequence[FunctionConfig]]


def default_functions(stack: EmbeddedStack) -> list[FunctionConfig]:
    """The function Terraform applied, or else the kit's own handler, with the stack's environment."""
    environment = stack.handler_environment()
    if stack.applied is None:
        return [FunctionConfig(environment=environment)]
    return [FunctionConfig.from_applied(stack.applied.function, environment)]


class LocalTwin(Started):
    def __init__(
        self, config: StackConfig | None = None, *, functions: FunctionsFor = default_functions
    ) -> None:
        self.config = config or StackConfig()
        self._functions_for = functions
        self._running = contextlib.ExitStack()
        self.functions: dict[str, LambdaFunction] = {}
        self.function_configs: list[FunctionConfig] = []

    def start(self) -> None:
        running = self._running
        self.stack = running.enter_context(EmbeddedStack(self.config))
        self.function_configs = list(self._functions_for(self.stack))
        for function in self.function_configs:
            self.functions[function.name] = running.enter_context(LambdaFunction(function))
        self.invoke_api = InvokeApi(self.functions, forward_to=self.stack.aws.endpoint_url)
        self.invoke_api.start()
        running.callback(self.invoke_api.stop)

    def stop(self) -> None:
        self._running.close()

    def environment(self) -> dict[str, str]:
        """Everything another shell needs: the stack's variables, and boto3's Lambda endpoint with the
        (first) function's name."""
        return {
            **self.stack.environment(),
            # boto3's Lambda client goes here (Invoke runs the handler; the rest is forwarded to moto).
            "AWS_ENDPOINT_URL_LAMBDA": self.invoke_api.endpoint_url,
            "LAMBDA_FUNCTION_NAME": self.function_configs[0].name,
        }

    def lambda_client(self, config: Config | None = None) -> Any:
        """boto3's Lambda client for the twin's functions (every other Lambda call reaches moto)."""
        credentials = self.stack.aws.credentials
        return boto3.session.Session().client(
            "lambda",
            endpoint_url=self.invoke_api.endpoint_url,
            region_name=credentials.region,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            config=config,
        )
