"""Who an agent is: the name the registry, the plan, events and peers know it by, and what it does."""

from __future__ import annotations

from typing import Any


class IdentityMixin:
    """Class-level identity; instances may override any of it."""

    name: str = "agent"
    version: str = "0.1.0"
    capabilities: frozenset[str] = frozenset()

    def identity(self) -> dict[str, Any]:
        """A JSON-able description (the report's ``agents`` section)."""
        return {"name": self.name, "version": self.version, "capabilities": sorted(self.capabilities)}
