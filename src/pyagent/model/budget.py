"""One spending ledger shared by a whole chain of tasks, so delegation cannot multiply the budget."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from pyagent.model.errors import BudgetExceeded, ContextWireError

_LIMIT_KEYS = ("tokens", "cost_usd", "wall_seconds", "steps")


def _check_limit(name: str, value: float | None, *, integer: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"budget limit {name} must be a number or None, got {value!r}")
    if integer and not isinstance(value, int):
        raise ValueError(f"budget limit {name} must be a whole number, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"budget limit {name} must be >= 0, got {value!r}")


class Budget:
    """Mutable, thread-safe ledger of LLM tokens, cost, wall time and steps.

    Every ``CascadeContext`` of one chain holds the same ``Budget`` object; children
    charge it and the parent sees the spend at once. ``None`` means unlimited.
    Wall time counts from creation (or carries on from the sender after ``from_wire``).
    """

    __slots__ = ("_cost", "_lock", "_start", "_steps", "_tokens", "cost_usd", "steps", "tokens", "wall_seconds")

    def __init__(
        self,
        *,
        tokens: int | None = None,
        cost_usd: float | None = None,
        wall_seconds: float | None = None,
        steps: int | None = None,
    ) -> None:
        _check_limit("tokens", tokens, integer=True)
        _check_limit("cost_usd", cost_usd, integer=False)
        _check_limit("wall_seconds", wall_seconds, integer=False)
        _check_limit("steps", steps, integer=True)
        self.tokens = tokens
        self.cost_usd = cost_usd
        self.wall_seconds = wall_seconds
        self.steps = steps
        self._tokens = 0
        self._cost = 0.0
        self._steps = 0
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Budget(limits={self.limits()}, used={self.used()})"

    def limits(self) -> dict[str, float | None]:
        return {"tokens": self.tokens, "cost_usd": self.cost_usd, "wall_seconds": self.wall_seconds, "steps": self.steps}

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def used(self) -> dict[str, float]:
        with self._lock:
            return {"tokens": self._tokens, "cost_usd": self._cost, "wall_seconds": self.elapsed(), "steps": self._steps}

    def remaining(self) -> dict[str, float | None]:
        """What is left of each limit (never negative); ``None`` for unlimited ones."""
        used = self.used()
        out: dict[str, float | None] = {}
        for key, limit in self.limits().items():
            out[key] = None if limit is None else max(0, limit - used[key])
        return out

    def _exhausted_locked(self) -> str | None:
        if self.tokens is not None and self._tokens > self.tokens:
            return f"token budget exhausted: used {self._tokens} of {self.tokens} tokens"
        if self.cost_usd is not None and self._cost > self.cost_usd:
            return f"cost budget exhausted: spent ${self._cost:.4f} of ${self.cost_usd:.4f}"
        if self.steps is not None and self._steps > self.steps:
            return f"step budget exhausted: took {self._steps} of {self.steps} steps"
        if self.wall_seconds is not None:
            elapsed = self.elapsed()
            if elapsed > self.wall_seconds:
                return f"wall-time budget exhausted: {elapsed:.1f}s of {self.wall_seconds:.1f}s"
        return None

    def exhausted(self) -> str | None:
        """The reason the budget is spent, or ``None`` while there is some left."""
        with self._lock:
            return self._exhausted_locked()

    def check(self) -> None:
        """Raise ``BudgetExceeded`` if any limit is already passed."""
        reason = self.exhausted()
        if reason is not None:
            raise BudgetExceeded(reason)

    def charge(self, tokens: int = 0, cost: float = 0.0, steps: int = 0) -> None:
        """Record spend; raise ``BudgetExceeded`` once a limit is passed.

        The spend is recorded even when it crosses the limit: the tokens were used, and the
        report must show them.
        """
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens to charge must be a whole number >= 0, got {tokens!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps to charge must be a whole number >= 0, got {steps!r}")
        if isinstance(cost, bool) or not isinstance(cost, int | float) or math.isnan(cost) or cost < 0:
            raise ValueError(f"cost to charge must be a number >= 0, got {cost!r}")
        with self._lock:
            self._tokens += tokens
            self._cost += float(cost)
            self._steps += steps
            reason = self._exhausted_locked()
        if reason is not None:
            raise BudgetExceeded(reason)

    def to_wire(self) -> dict[str, Any]:
        """A msgpack/JSON-able snapshot: limits plus what was used so far."""
        return {"limits": self.limits(), "used": self.used()}

    @classmethod
    def from_wire(cls, data: Any) -> Budget:
        """Rebuild a budget on another node; it carries on from the sender's spend and elapsed time."""
        if not isinstance(data, dict) or not isinstance(data.get("limits"), dict) or not isinstance(data.get("used"), dict):
            raise ContextWireError("budget must be a mapping with 'limits' and 'used' mappings")
        limits, used = data["limits"], data["used"]
        unknown = set(limits) - set(_LIMIT_KEYS)
        if unknown:
            raise ContextWireError(f"unknown budget limits: {sorted(unknown)}")
        try:
            budget = cls(**{k: limits.get(k) for k in _LIMIT_KEYS})
        except ValueError as exc:
            raise ContextWireError(str(exc)) from None
        for key in _LIMIT_KEYS:
            value = used.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 0:
                raise ContextWireError(f"budget used.{key} must be a number >= 0, got {value!r}")
        if not isinstance(used.get("tokens", 0), int) or not isinstance(used.get("steps", 0), int):
            raise ContextWireError("budget used.tokens and used.steps must be whole numbers")
        budget._tokens = used.get("tokens", 0)
        budget._cost = float(used.get("cost_usd", 0.0))
        budget._steps = used.get("steps", 0)
        budget._start = time.monotonic() - float(used.get("wall_seconds", 0.0))
        return budget
