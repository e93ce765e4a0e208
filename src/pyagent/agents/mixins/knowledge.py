"""Reads and records facts through the one ``KnowledgeBackend`` interface."""

from __future__ import annotations

from pyagent.model.context import CascadeContext
from pyagent.model.knowledge import ChangeOutcome, KnowledgeBackend, OutcomeStatus


class KnowledgeMixin:
    """Lets an agent learn from outcomes: skip changes that already failed on the same content."""

    name: str
    knowledge: KnowledgeBackend

    def record_outcome(
        self,
        *,
        action: str,
        task_kind: str,
        target: str,
        target_hash: str,
        status: OutcomeStatus,
        reason: str | None = None,
        context: CascadeContext | None = None,
    ) -> ChangeOutcome:
        outcome = ChangeOutcome(
            agent=self.name,
            action=action,
            task_kind=task_kind,
            target=target,
            target_hash=target_hash,
            status=status,
            reason=reason,
            lineage=context.lineage_ids() if context is not None else (),
        )
        self.knowledge.record_outcome(outcome)
        return outcome

    def known_failure(self, action: str, target: str, target_hash: str) -> str | None:
        """Why this agent's ``action`` on this exact content failed before, if it did."""
        return self.knowledge.known_failure(agent=self.name, action=action, target=target, target_hash=target_hash)

    def route_weight(self, task_kind: str) -> float:
        return self.knowledge.route_weight(self.name, task_kind)
