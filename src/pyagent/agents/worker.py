"""What an agent's ``run`` returns: a sentence for the report and commit message, its usage, or its error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AgentOutcome"]


@dataclass
class AgentOutcome:
    """What an agent did: a sentence for the report and commit message, its LLM usage, or its error."""

    note: str
    usage: dict[str, Any] = field(default_factory=lambda: {"tokens": 0, "cost": 0.0, "calls": 0})
    error: str | None = None
