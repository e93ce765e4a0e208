"""The deprecation agent: warnings the project's own baseline test run emits become tasks.

A DeprecationWarning, PendingDeprecationWarning or FutureWarning whose file and line are inside the
project is matched with ruff's findings on that line among the rules that rewrite deprecated APIs
(``assertEquals`` -> ``assertEqual``, ``logger.warn`` -> ``logger.warning``, ``mock`` -> ``unittest.mock``,
NumPy 2 aliases, ...). A match with a SAFE fix is a task (one rule, one file); a warning no rule
fixes is listed in the report as found. Whether a warning went away is read from the final run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyagent.agents import ruff
from pyagent.agents.base import BaseAgent
from pyagent.agents.worker import AgentOutcome

if TYPE_CHECKING:
    from pyagent.agents.ruff import Finding
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.model.task import AgentTask
    from pyagent.shell import SecureShell

__all__ = ["DEPRECATION_RULES", "DeprecationAgent", "WarningMatch", "match_warnings"]

# ruff rules whose fixes replace deprecated standard-library or NumPy spellings
DEPRECATION_RULES: tuple[str, ...] = (
    "UP005",  # deprecated unittest aliases (assertEquals, ...)
    "UP019",  # typing.Text
    "UP021",  # universal_newlines -> text
    "UP022",  # stdout=PIPE, stderr=PIPE -> capture_output
    "UP023",  # xml.etree.cElementTree
    "UP024",  # OSError aliases
    "UP026",  # mock -> unittest.mock
    "UP041",  # asyncio.TimeoutError / socket.timeout aliases
    "G010",  # logger.warn -> logger.warning
    "NPY201",  # NumPy 2 removals
)


@dataclass(frozen=True)
class WarningMatch:
    """One baseline warning and the ruff finding (if any) that fixes it."""

    path: str
    line: int
    category: str
    message: str
    rule: str | None  # None: no ruff rule fixes it (reported as found)


def match_warnings(
    warnings: Sequence[tuple[str, int, str, str]], findings: Sequence[Finding]
) -> list[WarningMatch]:
    """Pair each warning with a safely fixable deprecation finding on the same file and line."""
    fixable = {(f.path, f.line): f.code for f in findings if f.fix == "safe" and f.code in DEPRECATION_RULES}
    return [WarningMatch(p, ln, cat, msg, fixable.get((p, ln))) for p, ln, cat, msg in warnings]


class DeprecationAgent(BaseAgent):
    """Applies ruff's safe fix of ``task.params["rule"]`` for a warning the tests emitted."""

    name = "deprecation"
    capabilities = frozenset({"deprecation-fix"})
    commands: tuple[str, ...] = ("ruff",)

    def __init__(self, shell: SecureShell | None = None, *, knowledge: KnowledgeBackend | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.shell = shell

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        rule = str(task.params.get("rule", ""))
        if rule not in DEPRECATION_RULES:
            return AgentOutcome(note="", error=f"{rule!r} is not a deprecation rule")
        await ruff.fix(workspace, list(task.files), rule, shell=self.shell)
        warning = task.params.get("warning", "")
        return AgentOutcome(note=f"ruff safe fix {rule} for the test run's warning: {warning}")
