"""Who an agent is: name, version, what it can do, and how urgent its work is by default."""

from __future__ import annotations

from typing import Any

from pyagent.model.priority import AgentPriority


class IdentityMixin:
    """Class-level identity; instances may override any of it."""

    name: str = "agent"
    version: str = "0.1.0"
    capabilities: frozenset[str] = frozenset()
    priority: AgentPriority = AgentPriority.STANDARD

    @property
    def agent_id(self) -> str:
        return f"{self.name}@{self.version}"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def identity(self) -> dict[str, Any]:
        """A JSON-able description (for reports, events and peers)."""
        return {
            "name": self.name,
            "version": self.version,
            "capabilities": sorted(self.capabilities),
            "priority": self.priority.name,
        }
