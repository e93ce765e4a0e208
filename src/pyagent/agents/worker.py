"""What an agent's ``run`` returns: a sentence for the report and commit message, its usage, or its error."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyagent.model.verification import Usage

__all__ = ["AgentOutcome"]


@dataclass(frozen=True)
class AgentOutcome:
    """What an agent did: a sentence for the report and commit message, its LLM usage, or its error."""

    note: str
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
