"""BaseAgent: every agent the product runs is one, composed from the mixins below.

One contract: ``await agent.run(task, workspace)`` changes only ``task.files`` inside ``workspace``
(an isolated copy, never the user's tree) and says what it did in an ``AgentOutcome``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pyagent.agents.mixins.governance import GovernanceMixin
from pyagent.agents.mixins.identity import IdentityMixin
from pyagent.agents.mixins.knowledge import KnowledgeMixin
from pyagent.agents.mixins.orchestration import OrchestrationMixin
from pyagent.model.knowledge import InMemoryKnowledge, KnowledgeBackend

if TYPE_CHECKING:
    from pyagent.agents.worker import AgentOutcome
    from pyagent.model.task import AgentTask

__all__ = ["BaseAgent"]


class BaseAgent(IdentityMixin, GovernanceMixin, KnowledgeMixin, OrchestrationMixin):
    """Identity (registry, report), governance (before running and before merging), knowledge
    (outcomes for the planner) and orchestration (retries as child tasks of the same chain)."""

    # How often a change the gate rejected is tried again as a child task that carries the gate's
    # reason. Only agents that can use the reason (LLM agents) set it; a deterministic fixer would
    # only make the same change again.
    retries: int = 0

    def __init__(self, *, knowledge: KnowledgeBackend | None = None) -> None:
        self.knowledge = knowledge if knowledge is not None else InMemoryKnowledge()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}@{self.version}>"

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        """Do ``task`` inside ``workspace``."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(task, workspace)")
