"""The agents a run (or a remote node) can use, by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyagent.agents.base import BaseAgent
from pyagent.agents.complexity import ComplexityAgent
from pyagent.agents.deadcode import DeadCodeAgent
from pyagent.agents.deprecation import DeprecationAgent
from pyagent.agents.fixers import FAMILIES, FormatAgent, RuffFixAgent
from pyagent.agents.typehints import TypesAgent

if TYPE_CHECKING:
    from pyagent.agents.llm.base import LLMClient
    from pyagent.agents.ruff import LintRules
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.shell import SecureShell

__all__ = ["OFFLINE_AGENTS", "build_agents"]

OFFLINE_AGENTS: tuple[str, ...] = (*FAMILIES, "deprecation", "format", "deadcode", "complexity", "types")


def build_agents(
    shell: SecureShell | None = None,
    llm: LLMClient | None = None,
    *,
    max_complexity: int = 10,
    knowledge: KnowledgeBackend | None = None,
    rules: LintRules | None = None,
) -> dict[str, BaseAgent]:
    """Offline fixers always (under the project's lint ``rules``); the refactor and docstring agents
    when an LLM is configured."""
    agents: dict[str, BaseAgent] = {
        name: RuffFixAgent(name, shell, knowledge=knowledge, rules=rules) for name in FAMILIES
    }
    agents["format"] = FormatAgent(shell, knowledge=knowledge)
    agents["complexity"] = ComplexityAgent(shell, max_complexity=max_complexity, knowledge=knowledge)
    agents["deadcode"] = DeadCodeAgent(knowledge=knowledge)
    agents["deprecation"] = DeprecationAgent(shell, knowledge=knowledge)
    agents["types"] = TypesAgent(shell, knowledge=knowledge)
    if llm is not None:
        from pyagent.agents.refactor import DocstringAgent, RefactorAgent

        agents["refactor"] = RefactorAgent(llm, max_complexity=max_complexity, knowledge=knowledge)
        agents["docstring"] = DocstringAgent(llm, knowledge=knowledge)
    return agents
