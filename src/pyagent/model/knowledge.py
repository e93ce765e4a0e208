"""The one interface agents and the fleet use to learn from past outcomes.

The fleet only depends on ``KnowledgeBackend``; the persistent store (``pyagent.memory``)
implements it, and ``InMemoryKnowledge`` is the default for runs without one.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pyagent.model.status import Status


@dataclass(frozen=True, slots=True)
class ChangeOutcome:
    """What happened to one attempted change; the unit of learning."""

    agent: str
    action: str
    task_kind: str
    target: str
    target_hash: str
    status: Status
    reason: str | None = None
    lineage: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status.from_wire(self.status))  # a status read back, or ValueError
        for name in ("agent", "action", "task_kind", "target"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"outcome {name} must be a non-empty string")


@runtime_checkable
class KnowledgeBackend(Protocol):
    """Facts the fleet records and consults; implementations must be thread-safe."""

    def record_outcome(self, outcome: ChangeOutcome) -> None: ...

    def known_failure(self, *, agent: str, action: str, target: str, target_hash: str) -> str | None:
        """Why this exact change on this exact file content failed before, if it did."""
        ...

    def route_weight(self, agent: str, task_kind: str) -> float:
        """How much to trust ``agent`` with ``task_kind`` (1.0 = neutral)."""
        ...

    def tick(self) -> None:
        """One fleet execution cycle passed (one task reached a final state)."""
        ...


class InMemoryKnowledge:
    """Process-local knowledge: remembers failures and nudges route weights; lost on exit."""

    def __init__(self, *, max_outcomes: int = 10_000, reward: float = 1.1, penalty: float = 0.8) -> None:
        self._lock = threading.Lock()
        self.outcomes: deque[ChangeOutcome] = deque(maxlen=max_outcomes)
        self._failures: dict[tuple[str, str, str, str], str] = {}
        self._weights: dict[tuple[str, str], float] = {}
        self._reward = reward
        self._penalty = penalty
        self.cycles = 0

    def record_outcome(self, outcome: ChangeOutcome) -> None:
        key = (outcome.agent, outcome.action, outcome.target, outcome.target_hash)
        route = (outcome.agent, outcome.task_kind)
        with self._lock:
            self.outcomes.append(outcome)
            weight = self._weights.get(route, 1.0)
            if outcome.status is Status.KEPT:
                self._failures.pop(key, None)
                self._weights[route] = min(weight * self._reward, 10.0)
            elif outcome.status in (Status.ROLLED_BACK, Status.FAILED):
                self._failures[key] = outcome.reason or outcome.status
                self._weights[route] = max(weight * self._penalty, 0.01)

    def known_failure(self, *, agent: str, action: str, target: str, target_hash: str) -> str | None:
        with self._lock:
            return self._failures.get((agent, action, target, target_hash))

    def route_weight(self, agent: str, task_kind: str) -> float:
        with self._lock:
            return self._weights.get((agent, task_kind), 1.0)

    def tick(self) -> None:
        with self._lock:
            self.cycles += 1
