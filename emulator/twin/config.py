"""What a twin runs: the stack's settings and your functions, and how they get their environment.

Which functions run: those TwinConfig.functions names (your code directories), and every function
a Terraform apply created (each with the code its package uploaded); with neither, the kit's
example handler.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from emulator.awslambda.function import FunctionConfig
from emulator.errors import ComponentError
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
