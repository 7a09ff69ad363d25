"""The local twin as one object: the stack, the Lambda functions that run on it and Lambda's API.

`with LocalTwin(TwinConfig(...)) as twin:` starts PostgreSQL, the AWS API emulator and the proxy
(running your schema), then the functions behind the Lambda API; leaving the block stops
everything, newest first. TwinConfig holds what the CLI's options say (`up`, `invoke`), so the
command line and Python code start the same twin. `python -m emulator up` and the stage's local
target are built on it.

Which functions run: those TwinConfig.functions names (your code directories), and every function
a Terraform apply created (each with the code its package uploaded); with neither, the kit's
example handler.
"""

from __future__ import annotations

import contextlib
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from emulator.awslambda.function import FunctionConfig, LambdaFunction
from emulator.awslambda.invoke_api import InvokeApi
from emulator.errors import ComponentError
from emulator.lifecycle import Started
from emulator.stack.embedded import EmbeddedStack, StackConfig


@dataclass(frozen=True)
class TwinConfig:
    """Everything a twin runs: the stack's settings and your functions (the CLI's options)."""

    stack: StackConfig = field(default_factory=StackConfig)
    # Functions run from code directories (--function, or --handler with --code). Their
    # environment is the stack's (DB_PROXY_ENDPOINT, DB_PORT, DB_NAME, DB_USER, DB_AUTH,
    # DB_SECRET_ARN, AWS_*, ...) with theirs on top; a value may name the stack's variables as
    # ${NAME}, e.g. DB_HOST=${DB_PROXY_ENDPOINT}.
    functions: tuple[FunctionConfig, ...] = ()
    # Variables for every function, Terraform's included (--env NAME=VALUE), ${NAME} expanded too.
    environment: Mapping[str, str] = field(default_factory=dict)
    # Where the functions' logs go (their CloudWatch Logs in AWS); None: the caller's stdout.
    function_log: Path | None = None


FunctionsFor = Callable[[EmbeddedStack], Sequence[FunctionConfig]]


def expand(variables: Mapping[str, str], stack_variables: Mapping[str, str]) -> dict[str, str]:
    """${NAME} in a value becomes the stack's variable NAME ($$ is a literal $); others stay."""
    return {
        name: string.Template(value).safe_substitute(stack_variables) for name, value in variables.items()
    }


def twin_functions(config: TwinConfig) -> FunctionsFor:
    """The functions a TwinConfig runs, with their environments, once the stack is up."""

    def functions(stack: EmbeddedStack) -> list[FunctionConfig]:
        stack_variables = stack.handler_environment()
        extra = expand(config.environment, stack.environment())
        result: list[FunctionConfig] = []
        if stack.applied is not None:
            for applied in stack.applied.functions:
                environment = {**stack.applied_environment(applied), **extra}
                result.append(
                    FunctionConfig.from_applied(
                        applied,
                        environment,
                        code_dir=stack.unpack_function(applied),
                        log_path=config.function_log,
                    )
                )
        for function in config.functions:
            environment = {
                **stack_variables,
                **expand(function.environment, stack.environment()),
                **extra,
            }
            result.append(
                replace(function, environment=environment, log_path=function.log_path or config.function_log)
            )
        if not result:
            # Nothing named and nothing applied: the kit's example handler.
            result.append(
                FunctionConfig(environment={**stack_variables, **extra}, log_path=config.function_log)
            )
        names = [function.name for function in result]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ComponentError(
                "Lambda functions",
                f"two functions are named {', '.join(duplicates)}",
                "give each its own name (--function NAME=DIR:MODULE.FUNCTION)",
            )
        return result

    return functions


def default_functions(stack: EmbeddedStack) -> list[FunctionConfig]:
    """Every function Terraform applied, or else the kit's own handler, with the stack's environment."""
    return list(twin_functions(TwinConfig(stack=stack.config))(stack))


class LocalTwin(Started):
    def __init__(
        self, config: TwinConfig | StackConfig | None = None, *, functions: FunctionsFor | None = None
    ) -> None:
        twin = config if isinstance(config, TwinConfig) else TwinConfig(stack=config or StackConfig())
        self.twin_config = twin
        self.config = twin.stack
        self._functions_for = functions or twin_functions(twin)
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
            # boto3's Lambda client goes here (the twin's functions; the rest is forwarded to moto).
            "AWS_ENDPOINT_URL_LAMBDA": self.invoke_api.endpoint_url,
            "LAMBDA_FUNCTION_NAME": self.function_configs[0].name,
            "LAMBDA_FUNCTION_NAMES": ",".join(function.name for function in self.function_configs),
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
