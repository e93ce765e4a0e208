"""Why a cascade (a chain of delegated tasks) was stopped: one exception class per reason."""

from __future__ import annotations


class CascadeLimitError(Exception):
    """A chain of tasks hit one of its limits; ``reason`` says which in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DepthLimitExceeded(CascadeLimitError):
    """Delegation went deeper than the context's ``max_depth``."""


class CircuitOpen(CascadeLimitError):
    """The same stage failed with the same error too often; retrying again would only burn budget."""


class LoopDetected(CascadeLimitError):
    """The same agent was asked to do the same action again further down its own chain."""


class BudgetExceeded(CascadeLimitError):
    """The chain's shared budget (tokens, cost, wall time or steps) is spent."""


class ContextWireError(ValueError):
    """A context or budget received from elsewhere is malformed."""
