"""Deterministic, offline agents: ruff's SAFE autofixes, one rule at a time, and the project's formatter.

One rule per task keeps every change small and attributable ("UP006 in core.py"), so one bad fix is
rolled back without losing the good ones next to it. Both work within the project's rules: the lint
settings come from the run's pipeline settings (the same on every peer) and the declared formatter in
``task.params["formatter"]``.
"""

from __future__ import annotations

from collections import Counter
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
        self,
        name: str,
        shell: SecureShell | None = None,
        *,
        knowledge: KnowledgeBackend | None = None,
        rules: ruff.LintRules | None = None,
    ) -> None:
        if name not in FAMILIES:
            raise ValueError(f"unknown fixer family {name!r}")
        super().__init__(knowledge=knowledge)
        self.name = name
        self.shell = shell
        self.rules = rules or ruff.LintRules()

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        rule = str(task.params.get("rule", ""))
        if not rule or agent_for_rule(rule) != self.name:
            return AgentOutcome(note="", error=f"{self.name} agent does not own rule {rule!r}")
        rules = self.rules
        files = list(task.files)
        before = Counter(f.key() for f in await ruff.check(workspace, files, rules=rules, shell=self.shell))
        await ruff.fix(workspace, files, rule, rules=rules, shell=self.shell)
        knock_on = await self._fix_knock_on(workspace, files, rules, before)
        message = task.params.get("message") or rule
        count = task.params.get("count", 0)
        why = FAMILIES[self.name][1]
        extra = f"; then {knock_on} finding(s) the fix itself caused" if knock_on else ""
        return AgentOutcome(note=f"ruff safe fix {rule}: {message} ({count} finding(s); {why}){extra}")

    async def _fix_knock_on(
        self, workspace: Path, files: list[str], rules: ruff.LintRules, before: Counter[tuple[str, str, str, str]]
    ) -> int:
        """Fix what the fix itself caused (e.g. ``from typing import List`` left unused by UP006),
        edit by edit, so no finding the file already had is touched."""
        fixed = 0
        for _round in range(2):
            after = await ruff.check(workspace, files, rules=rules, shell=self.shell)
            left = before.copy()
            new = []
            for f in after:
                if left[f.key()] > 0:
                    left[f.key()] -= 1
                else:
                    new.append(f)
            by_file: dict[str, list[ruff.Finding]] = {}
            for f in new:
                if f.fix == "safe":
                    by_file.setdefault(f.path, []).append(f)
            if not by_file:
                break
            done = sum(ruff.apply_fixes(workspace / p, fs) for p, fs in by_file.items())
            if not done:
                break
            fixed += done
        return fixed


class FormatAgent(BaseAgent):
    """Runs the project's declared formatter (``ruff format`` or black, with the project's settings).

    The planner only creates format tasks for a project that declares a formatter.
    """

    name = "format"
    capabilities = frozenset({"format"})
    commands: tuple[str, ...] = ("ruff",)

    def __init__(self, shell: SecureShell | None = None, *, knowledge: KnowledgeBackend | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.shell = shell

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        formatter = str(task.params.get("formatter", "ruff"))
        if formatter == "black":
            from pyagent.agents import black

            await black.format_files(workspace, list(task.files), shell=self.shell)
            return AgentOutcome(note="black: the project's declared formatter, with its settings")
        if formatter != "ruff":
            return AgentOutcome(note="", error=f"unknown formatter {formatter!r}")
        await ruff.format_files(workspace, list(task.files), shell=self.shell)
        return AgentOutcome(note="ruff format: the project's declared formatter, with its settings")
