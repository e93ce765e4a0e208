"""What agents see of an LLM: ``complete(messages)`` with every call metered and budgeted.

Cost is visible per call and per run (``UsageMeter``), and the run's ``Budget`` is a hard stop: it
is checked before each call and charged after it, so a run never starts a call it cannot afford
once the budget is spent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pyagent.model.budget import Budget

__all__ = ["PRICES", "LLMClient", "LLMError", "LLMReply", "UsageMeter", "price_for"]

# USD per million tokens (input, output) for common models; unknown models cost 0 (tokens still counted).
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "o4-mini": (1.10, 4.40),
}


def price_for(model: str) -> tuple[float, float]:
    """Price of ``model``; a dated variant (``gpt-4o-2024-08-06``) uses its family's price."""
    if model in PRICES:
        return PRICES[model]
    best = max((m for m in PRICES if model.startswith(m + "-")), key=len, default=None)
    return PRICES[best] if best else (0.0, 0.0)


class LLMError(RuntimeError):
    """The endpoint could not give an answer (after retries), or its answer was unreadable."""


@dataclass(frozen=True)
class LLMReply:
    text: str
    model: str
    input_tokens: int
    output_tokens: int
    cost: float
    latency: float
    attempts: int = 1

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class UsageMeter:
    """Per-call log and per-run totals of LLM use; ``on_call`` feeds the live display."""

    def __init__(self, on_call: Callable[[LLMReply, dict[str, Any]], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.calls: list[LLMReply] = []
        self.on_call = on_call

    def record(self, reply: LLMReply) -> None:
        with self._lock:
            self.calls.append(reply)
            totals = self._totals_locked()
        if self.on_call is not None:
            self.on_call(reply, totals)

    def _totals_locked(self) -> dict[str, Any]:
        return {
            "calls": len(self.calls),
            "input_tokens": sum(c.input_tokens for c in self.calls),
            "output_tokens": sum(c.output_tokens for c in self.calls),
            "tokens": sum(c.tokens for c in self.calls),
            "cost": round(sum(c.cost for c in self.calls), 6),
            "seconds": round(sum(c.latency for c in self.calls), 3),  # time spent waiting for the model
        }

    def totals(self) -> dict[str, Any]:
        with self._lock:
            return self._totals_locked()

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {**self._totals_locked(), "per_call": [asdict(c) | {"text": None} for c in self.calls]}


class LLMClient(Protocol):
    model: str
    meter: UsageMeter
    budget: Budget | None  # every call is charged here; a run sets it to its chain's one budget

    async def complete(self, messages: list[dict[str, str]], *, max_tokens: int = 2048,
                       schema: dict[str, Any] | None = None) -> LLMReply:
        """The model's reply; with ``schema`` the reply is JSON that the endpoint was asked to hold to it."""
        ...
