"""Errors the kit raises about its own parts."""

from __future__ import annotations


class ComponentError(RuntimeError):
    """A part of the local stack could not be found or started.

    The message always names the part and says how to get it, because the person reading it is
    usually setting the kit up for the first time.
    """

    def __init__(self, part: str, problem: str, hint: str = "") -> None:
        self.part = part
        self.problem = problem
        self.hint = hint
        text = f"{part}: {problem}"
        if hint:
            text += f"\n  how to fix: {hint}"
        super().__init__(text)


class ReadinessTimeout(ComponentError):
    """A part started but did not become ready before its deadline."""
