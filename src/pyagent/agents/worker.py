"""What every code-changing agent looks like to the executor: edit files in a workspace, say why."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pyagent.model.task import AgentTask

__all__ = ["AgentOutcome", "CodeAgent"]


@dataclass
class AgentOutcome:
    """What an agent did: a sentence for the report and commit message, its LLM usage, or its error."""

    note: str
    usage: dict[str, Any] = field(default_factory=lambda: {"tokens": 0, "cost": 0.0, "calls": 0})
    error: str | None = None


class CodeAgent(Protocol):
    """Changes only ``task.files`` inside ``workspace`` (an isolated copy); never touches the real tree."""

    name: str

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome: ...
