"""Single-purpose mixins that ``BaseAgent`` composes; a concrete agent adds what else it needs."""

from pyagent.agents.mixins.auditor import AuditorMixin
from pyagent.agents.mixins.governance import GovernanceError, GovernanceMixin
from pyagent.agents.mixins.identity import IdentityMixin
from pyagent.agents.mixins.knowledge import KnowledgeMixin
from pyagent.agents.mixins.orchestration import OrchestrationMixin

__all__ = [
    "AuditorMixin",
    "GovernanceError",
    "GovernanceMixin",
    "IdentityMixin",
    "KnowledgeMixin",
    "OrchestrationMixin",
]
