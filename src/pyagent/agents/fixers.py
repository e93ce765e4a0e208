"""Deterministic, offline agents: ruff's SAFE autofixes, one rule at a time, and ruff's formatter.

One rule per task keeps every change small and attributable ("UP006 in core.py"), so one bad fix is
rolled back without losing the good ones next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pyagent.agents import ruff
from pyagent.agents.base import BaseAgent
from pyagent.agents.worker import AgentOutcome

if TYPE_CHECKING:
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.model.task import AgentTask
    from pyagent.shell import SecureShell

__all__ = ["FAMILIES", "FormatAgent", "RuffFixAgent", "agent_for_rule"]

# agent name -> (rule prefixes it owns, what it is for). Order = the order tasks on one file run in.
FAMILIES: dict[str, tuple[tuple[str, ...], str]] = {
    "lint": (
        ("F", "E", "W", "B", "I", "PIE", "RUF"),
        "lint fixes (unused imports, comparisons, import order)",
    ),
    "modernize": (("UP", "FA"), "modernisation to current Python (pyupgrade rules)"),
    "simplify": (
        ("SIM", "C4", "RET", "PERF", "FURB"),
        "simplification (flake8-simplify, comprehensions, returns)",
    ),
}


def agent_for_rule(code: str) -> str | None:
    """The fixer agent that owns a ruff rule code (longest matching prefix wins)."""
    best: tuple[int, str] | None = None
    for agent, (prefixes, _why) in FAMILIES.items():
        for prefix in prefixes:
            owns = code.startswith(prefix) and code[len(prefix) :][:1].isdigit()
            if owns and (best is None or len(prefix) > best[0]):
                best = (len(prefix), agent)
    return best[1] if best else None


class RuffFixAgent(BaseAgent):
    """Applies ruff's safe fixes of ``task.params["rule"]`` to the task's files."""

    capabilities = frozenset({"ruff-fix"})
    commands: tuple[str, ...] = ("ruff",)

    def __init__(
        self, name: str, shell: SecureShell | None = None, *, knowledge: KnowledgeBackend | None = None
    ) -> None:
        if name not in FAMILIES:
            raise ValueError(f"unknown fixer family {name!r}")
        super().__init__(knowledge=knowledge)
        self.name = name
        self.shell = shell

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        rule = str(task.params.get("rule", ""))
        if not rule or agent_for_rule(rule) != self.name:
            return AgentOutcome(note="", error=f"{self.name} agent does not own rule {rule!r}")
        await ruff.fix(workspace, list(task.files), rule, shell=self.shell)
        message = task.params.get("message") or rule
        count = task.params.get("count", 0)
        why = FAMILIES[self.name][1]
        return AgentOutcome(note=f"ruff safe fix {rule}: {message} ({count} finding(s); {why})")


class FormatAgent(BaseAgent):
    """Runs ``ruff format`` on the task's files (the project's own formatter settings apply)."""

    name = "format"
    capabilities = frozenset({"format"})
    commands: tuple[str, ...] = ("ruff",)

    def __init__(self, shell: SecureShell | None = None, *, knowledge: KnowledgeBackend | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.shell = shell

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        await ruff.format_files(workspace, list(task.files), shell=self.shell)
        return AgentOutcome(note="ruff format: consistent layout and quoting")
