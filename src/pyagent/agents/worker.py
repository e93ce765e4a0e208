"""What an agent's ``run`` returns: a sentence for the report and commit message, its usage, its error, its tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyagent.model.verification import Usage

if TYPE_CHECKING:
    from pyagent.agents.test_results import TestResults

__all__ = ["AgentOutcome"]


@dataclass(frozen=True)
class AgentOutcome:
    """What an agent did: a sentence for the report and commit message, its LLM usage, or its error;
    the test agent's outcome also carries its per-test results (what the gate compares)."""

    note: str
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    tests: TestResults | None = None
