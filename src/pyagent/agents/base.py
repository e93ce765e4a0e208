"""BaseAgent: the mixins composed into one class that concrete agents subclass."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.agents.mixins.governance import GovernanceMixin
from pyagent.agents.mixins.identity import IdentityMixin
from pyagent.agents.mixins.knowledge import KnowledgeMixin
from pyagent.agents.mixins.orchestration import OrchestrationMixin
from pyagent.agents.mixins.persistence import PersistenceMixin
from pyagent.model.knowledge import InMemoryKnowledge, KnowledgeBackend
from pyagent.model.priority import AgentPriority

if TYPE_CHECKING:
    from pyagent.fleet.core import FleetManager, TaskControl, TaskFn, TaskHandle
    from pyagent.model.context import CascadeContext


class BaseAgent(IdentityMixin, GovernanceMixin, PersistenceMixin, KnowledgeMixin, OrchestrationMixin):
    """An agent: override ``run(control, payload)``; submit it with ``submit_to(fleet, payload)``.

    Governance comes before persistence in the MRO, so every transactional write is authorised.
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] = ".",
        knowledge: KnowledgeBackend | None = None,
        name: str | None = None,
        priority: AgentPriority | None = None,
        allowed_paths: Sequence[str] | None = None,
        allowed_commands: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.knowledge = knowledge if knowledge is not None else InMemoryKnowledge()
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError("agent name must be a non-empty string")
            self.name = name
        if priority is not None:
            self.priority = AgentPriority.parse(priority)
        if allowed_paths is not None:
            self.allowed_paths = tuple(allowed_paths)
        if allowed_commands is not None:
            self.allowed_commands = tuple(allowed_commands)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.agent_id}>"

    async def run(self, control: TaskControl, payload: Any) -> Any:
        """Do the work. Call ``await self.checkpoint(control)`` at safe points."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(control, payload)")

    def as_task(self, payload: Any = None) -> TaskFn[Any]:
        """A fleet task function that runs this agent on ``payload``."""

        async def task(control: TaskControl) -> Any:
            return await self.run(control, payload)

        return task

    def submit_to(
        self,
        fleet: FleetManager,
        payload: Any = None,
        *,
        action: str = "run",
        priority: AgentPriority | None = None,
        context: CascadeContext | None = None,
        timeout: float | None = None,
    ) -> TaskHandle[Any]:
        return fleet.submit(
            self.name,
            self.as_task(payload),
            priority=self.priority if priority is None else priority,
            context=context,
            timeout=timeout,
            kind=action,
        )
