"""The agents a run (or a remote node) can use, by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyagent.agents.complexity import ComplexityAgent
from pyagent.agents.deadcode import DeadCodeAgent
from pyagent.agents.deprecation import DeprecationAgent
from pyagent.agents.fixers import FAMILIES, FormatAgent, RuffFixAgent

if TYPE_CHECKING:
    from pyagent.agents.llm.base import LLMClient
    from pyagent.agents.worker import CodeAgent
    from pyagent.shell import SecureShell

__all__ = ["OFFLINE_AGENTS", "build_agents"]

OFFLINE_AGENTS: tuple[str, ...] = (*FAMILIES, "deprecation", "format", "deadcode", "complexity")


def build_agents(
    shell: SecureShell | None = None, llm: LLMClient | None = None, *, max_complexity: int = 10
) -> dict[str, CodeAgent]:
    """Offline fixers always; the refactor and docstring agents when an LLM is configured."""
    agents: dict[str, CodeAgent] = {name: RuffFixAgent(name, shell) for name in FAMILIES}
    agents["format"] = FormatAgent(shell)
    agents["complexity"] = ComplexityAgent(max_complexity=max_complexity)
    agents["deadcode"] = DeadCodeAgent()
    agents["deprecation"] = DeprecationAgent(shell)
    if llm is not None:
        from pyagent.agents.refactor import DocstringAgent, RefactorAgent

        agents["refactor"] = RefactorAgent(llm, max_complexity=max_complexity)
        agents["docstring"] = DocstringAgent(llm)
    return agents
