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

    # -- state and shell (transactions, replace, sandboxed execution)

    # -- agents and fleet

    # -- memory (knowledge store)
    "KnowledgeStore": "pyagent.memory.store",
    "NeuralPruningEngine": "pyagent.memory.pruning",

    # -- voyager (discovery and transport)

    # -- inference (engine)

    # -- server (Responses API)

}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # one import line per component, same order as _EXPORTS
    pass


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pyagent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
