"""PyAgent: a swarm of agents that improves Python code bases, one verified transaction at a time.

The public names below are imported lazily (PEP 562) so that ``import pyagent`` and
``pyagent --help`` stay fast; each name is resolved from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module that defines it. Each component adds its own names here.
# Keep one anchor comment per component so parallel work merges without conflicts.
_EXPORTS: dict[str, str] = {
    # -- health (code-health audit)
    "CodeHealthAuditor": "pyagent.health.auditor",
    "AuditReport": "pyagent.health.auditor",
    "FileHealth": "pyagent.health.auditor",
    "FunctionHealth": "pyagent.health.auditor",

    # -- state and shell (transactions, replace, sandboxed execution)
    "StateTransaction": "pyagent.state.transaction",
    "CommitResult": "pyagent.state.transaction",
    "TransactionError": "pyagent.state.errors",
    "ConflictError": "pyagent.state.errors",
    "SecureShell": "pyagent.shell.secure",
    "ShellResult": "pyagent.shell.secure",
    "ResourceLimits": "pyagent.shell.limits",

    # -- agents and fleet
    "Budget": "pyagent.model.budget",
    "CascadeContext": "pyagent.model.context",
    "BaseAgent": "pyagent.agents.base",
    "IdentityMixin": "pyagent.agents.mixins.identity",
    "KnowledgeMixin": "pyagent.agents.mixins.knowledge",
    "OrchestrationMixin": "pyagent.agents.mixins.orchestration",
    "GovernanceMixin": "pyagent.agents.mixins.governance",
    "AgentPriority": "pyagent.model.priority",
    "FleetManager": "pyagent.fleet.core",
    "FleetExecutionCore": "pyagent.fleet.core",

    # -- memory (knowledge store)
    "KnowledgeStore": "pyagent.memory.store",
    "NeuralPruningEngine": "pyagent.memory.pruning",

    # -- voyager (discovery and transport)
    "DiscoveryNode": "pyagent.voyager.discovery",
    "VoyagerTransport": "pyagent.voyager.transport",

    # -- inference (engine)
    "PagedAttentionEngine": "pyagent.inference.engine",
    "SamplingParams": "pyagent.inference.engine",

    # -- server (Responses API)
    "ResponseStore": "pyagent.server.store",
    "create_app": "pyagent.server.app",

}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # one import line per component, same order as _EXPORTS
    from pyagent.agents.base import BaseAgent as BaseAgent
    from pyagent.agents.mixins import GovernanceMixin as GovernanceMixin
    from pyagent.agents.mixins import IdentityMixin as IdentityMixin
    from pyagent.agents.mixins import KnowledgeMixin as KnowledgeMixin
    from pyagent.agents.mixins import OrchestrationMixin as OrchestrationMixin
    from pyagent.fleet.core import FleetExecutionCore as FleetExecutionCore
    from pyagent.fleet.core import FleetManager as FleetManager
    from pyagent.health.auditor import AuditReport as AuditReport
    from pyagent.health.auditor import CodeHealthAuditor as CodeHealthAuditor
    from pyagent.health.auditor import FileHealth as FileHealth
    from pyagent.health.auditor import FunctionHealth as FunctionHealth
    from pyagent.inference.engine import PagedAttentionEngine as PagedAttentionEngine
    from pyagent.inference.engine import SamplingParams as SamplingParams
    from pyagent.memory.pruning import NeuralPruningEngine as NeuralPruningEngine
    from pyagent.memory.store import KnowledgeStore as KnowledgeStore
    from pyagent.model.budget import Budget as Budget
    from pyagent.model.context import CascadeContext as CascadeContext
    from pyagent.model.priority import AgentPriority as AgentPriority
    from pyagent.shell.limits import ResourceLimits as ResourceLimits
    from pyagent.shell.secure import SecureShell as SecureShell
    from pyagent.shell.secure import ShellResult as ShellResult
    from pyagent.state.errors import ConflictError as ConflictError
    from pyagent.state.errors import TransactionError as TransactionError
    from pyagent.state.transaction import CommitResult as CommitResult
    from pyagent.state.transaction import StateTransaction as StateTransaction
    from pyagent.voyager import DiscoveryNode as DiscoveryNode
    from pyagent.voyager import VoyagerTransport as VoyagerTransport


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pyagent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
