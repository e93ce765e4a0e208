"""The agents a run (or a remote node) can use, by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyagent.agents.fixers import FAMILIES, FormatAgent, RuffFixAgent

if TYPE_CHECKING:
    from pyagent.agents.llm.base import LLMClient
    from pyagent.agents.ruff import LintRules
    from pyagent.agents.worker import CodeAgent
    from pyagent.shell import SecureShell

__all__ = ["OFFLINE_AGENTS", "build_agents"]

OFFLINE_AGENTS: tuple[str, ...] = (*FAMILIES, "format")


def build_agents(
    shell: SecureShell | None = None,
    llm: LLMClient | None = None,
    *,
    max_complexity: int = 10,
    rules: LintRules | None = None,
) -> dict[str, CodeAgent]:
    """Offline fixers always (under the project's lint ``rules``); the refactor and docstring agents
    when an LLM is configured."""
    agents: dict[str, CodeAgent] = {name: RuffFixAgent(name, shell, rules) for name in FAMILIES}
    agents["format"] = FormatAgent(shell)
    if llm is not None:
        from pyagent.agents.refactor import DocstringAgent, RefactorAgent

        agents["refactor"] = RefactorAgent(llm, max_complexity=max_complexity)
        agents["docstring"] = DocstringAgent(llm)
    return agents
