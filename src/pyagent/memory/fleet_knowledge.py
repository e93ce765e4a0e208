"""FleetKnowledge: the planner's ``KnowledgeBackend`` backed by the whole fleet's memory.

Outcomes are recorded in the local store (the machine's ``pyagent node --memory`` replicates
them). A change is vetoed when this store *or any trusted node* knows it failed on the same file
content; a route weight is the newest one in the fleet. A node that does not answer within the
deadline is skipped (the local answer stands), so a slow peer never stalls the planner for long.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pyagent.memory.fleet_memory import FAILURES, StoreKnowledge, failure_key
from pyagent.memory.pruning import ROUTES

if TYPE_CHECKING:
    from pyagent.memory.fleet_query import FleetQuery
    from pyagent.model.knowledge import ChangeOutcome

__all__ = ["FleetKnowledge"]

_SEP = "\x1f"


class FleetKnowledge:
    """Implements ``pyagent.model.knowledge.KnowledgeBackend``; thread-safe."""

    def __init__(self, local: StoreKnowledge, client: FleetQuery, *, deadline: float = 1.0,
                 route_ttl: float = 1.0) -> None:
        self.local = local
        self.client = client
        self.deadline = deadline
        self.route_ttl = route_ttl
        self._routes: dict[str, tuple[float, dict[str, Any]]] = {}

    def record_outcome(self, outcome: ChangeOutcome) -> None:
        self.local.record_outcome(outcome)
        self._routes.pop(outcome.task_kind, None)

    def known_failure(self, *, agent: str, action: str, target: str, target_hash: str) -> str | None:
        known = self.local.known_failure(agent=agent, action=action, target=target, target_hash=target_hash)
        if known is not None or not target_hash:
            return known
        found = self.client.query("fact", {"namespace": FAILURES, "key": failure_key(target_hash, agent, action)},
                                  timeout=self.deadline)
        if found.result is None:
            return None
        value = found.result[3]
        return str(value.get("reason", "failed before")) if isinstance(value, dict) else "failed before"

    def route_weight(self, agent: str, task_kind: str) -> float:
        now = time.monotonic()
        cached = self._routes.get(task_kind)
        if cached is None or now - cached[0] > self.route_ttl:
            found = self.client.query("facts", {"namespace": ROUTES, "prefix": f"{task_kind}{_SEP}"},
                                      timeout=self.deadline)
            cached = (now, {row[3]["agent"]: row for row in found.result if isinstance(row[3], dict)})
            self._routes[task_kind] = cached
        row = cached[1].get(agent)
        if row is None:
            return self.local.route_weight(agent, task_kind)
        pruning = self.local.pruning
        return pruning.decayed(row[4], self.local.store.cycle - row[6])

    def tick(self) -> None:
        self.local.tick()

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.local.close()
