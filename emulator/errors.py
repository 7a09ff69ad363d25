"""Errors the kit raises about its own parts."""

from __future__ import annotations


class ComponentError(RuntimeError):
    """A component of the local stack (a process it runs) could not be found or started.

    The message always names the component and says how to get it, because the person reading it is
    usually setting the kit up for the first time.
    """

    def __init__(self, component: str, problem: str, hint: str = "") -> None:
        self.component = component
        self.problem = problem
        self.hint = hint
        text = f"{component}: {problem}"
        if hint:
            text += f"\n  how to fix: {hint}"
        super().__init__(text)


class ReadinessTimeout(ComponentError):
    """A component started but did not become ready before its deadline."""
