"""Records what became of an agent's work through the one ``KnowledgeBackend`` interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyagent.model.knowledge import ChangeOutcome, KnowledgeBackend

if TYPE_CHECKING:
    from pyagent.model.status import Status
    from pyagent.model.task import AgentTask


class KnowledgeMixin:
    """Lets the planner learn from outcomes: a change that failed on this exact content is not tried again."""

    name: str
    knowledge: KnowledgeBackend

    def record_outcome(self, task: AgentTask, status: Status, reason: str | None = None) -> ChangeOutcome:
        outcome = ChangeOutcome(
            agent=self.name,
            action=str(task.params.get("action", self.name)),
            task_kind=task.kind,
            target=task.target,
            target_hash=str(task.params.get("target_hash", "")),
            status=status,
            reason=reason,
            lineage=task.context.lineage_ids(),
        )
        self.knowledge.record_outcome(outcome)
        return outcome
