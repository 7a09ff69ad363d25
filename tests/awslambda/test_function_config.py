"""A function's configuration, checked before any environment starts."""

from __future__ import annotations

import sys

import pytest

from emulator.awslambda.function import FunctionConfig
from emulator.errors import ComponentError

KIT_PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"


def test_a_function_of_another_language_is_refused_by_its_runtime() -> None:
    with pytest.raises(ComponentError, match=r"runtime is nodejs20\.x: the twin runs Python handlers only"):
        FunctionConfig(name="api", runtime="nodejs20.x").check()


def test_a_function_runs_on_the_kit_s_python_and_says_so_by_default() -> None:
    config = FunctionConfig(name="api")

    assert config.runtime == KIT_PYTHON
    assert config.runtime_warning() is None


def test_a_function_that_declares_another_python_is_warned_about() -> None:
    other = "python3.9" if KIT_PYTHON != "python3.9" else "python3.12"

    warning = FunctionConfig(name="api", runtime=other).runtime_warning()

    assert warning is not None
    assert warning.startswith(f"warning: Lambda function api declares {other}; the twin runs it on Python ")
    assert KIT_PYTHON.removeprefix("python") in warning
