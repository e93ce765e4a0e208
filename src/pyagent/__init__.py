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

    # -- agents and fleet

    # -- memory (knowledge store)

    # -- voyager (discovery and transport)

    # -- inference (engine)

    # -- server (Responses API)

}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # one import line per component, same order as _EXPORTS
    from pyagent.health.auditor import AuditReport as AuditReport
    from pyagent.health.auditor import CodeHealthAuditor as CodeHealthAuditor
    from pyagent.health.auditor import FileHealth as FileHealth
    from pyagent.health.auditor import FunctionHealth as FunctionHealth


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pyagent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
