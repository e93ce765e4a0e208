"""Single-purpose mixins that ``BaseAgent`` composes; a concrete agent picks what it needs."""

from pyagent.agents.mixins.auditor import AuditorMixin
from pyagent.agents.mixins.governance import GovernanceError, GovernanceMixin
from pyagent.agents.mixins.identity import IdentityMixin
from pyagent.agents.mixins.knowledge import KnowledgeMixin
from pyagent.agents.mixins.orchestration import OrchestrationMixin, UnknownToolError
from pyagent.agents.mixins.persistence import CheckpointError, PersistenceMixin

__all__ = [
    "AuditorMixin",
    "CheckpointError",
    "GovernanceError",
    "GovernanceMixin",
    "IdentityMixin",
    "KnowledgeMixin",
    "OrchestrationMixin",
    "PersistenceMixin",
    "UnknownToolError",
]
