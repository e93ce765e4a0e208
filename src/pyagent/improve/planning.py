"""Before the tasks: the project's own rules and options, the health measured, the formatter it declares,
and the plan (worst code first; a resumed run keeps its plan)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.improve.options import ImproveError
from pyagent.improve.run_base import RunBase

if TYPE_CHECKING:
    from pyagent.agents.deprecation import WarningMatch
    from pyagent.health import AuditReport

__all__ = ["PlanningPhase"]


class PlanningPhase(RunBase):
    """Configuration, measurement and the plan."""

    def _configure(self) -> None:
        """Options from ``[tool.pyagent]`` where the caller left them unset; fail fast on what cannot work."""
        from pyagent.improve.project_config import ProjectConfigError, load_pyagent_config, python_files

        if not python_files(self.path):
            raise ImproveError(f"no Python files under {self.path}: nothing to improve")
        try:
            cfg = load_pyagent_config(self.path)
        except ProjectConfigError as exc:
            raise ImproveError(str(exc)) from exc
        opts = self.opts
        self.max_complexity = opts.max_complexity or cfg.max_complexity or 10
        self.test_cmd = opts.test_cmd if opts.test_cmd is not None else None
        self.configured_test_cmd = cfg.test_cmd
        self.formatter_override = opts.formatter if opts.formatter is not None else cfg.formatter
        self.allow_few_tests = bool(opts.allow_few_tests if opts.allow_few_tests is not None else cfg.allow_few_tests)
        self.agent_filter = opts.agents if opts.agents is not None else cfg.agents
        self.exclude = (*cfg.exclude, *opts.exclude)
        from pyagent.agents.registry import OFFLINE_AGENTS

        known = {*OFFLINE_AGENTS, "refactor", "docstring"}
        unknown = sorted(set(self.agent_filter or ()) - known)
        if unknown:
            raise ImproveError(f"unknown agent(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if opts.llm and opts.llm_client is None:
            from pyagent.agents.llm.factory import LLMConfigError, preflight

            try:
                preflight(opts.llm, base_url=opts.llm_base_url)
            except LLMConfigError as exc:
                raise ImproveError(str(exc)) from exc

    async def _measure(
        self, tree: Path, *, formatted: bool = True
    ) -> tuple[AuditReport, int, list[Any], list[str] | None]:
        from pyagent.agents import ruff
        from pyagent.health import CodeHealthAuditor

        audit = await asyncio.to_thread(CodeHealthAuditor().audit_path, tree)
        findings = await ruff.check(tree, ["."], rules=self.rules, shell=self.shell)
        unformatted = await ruff.unformatted(tree, ["."], shell=self.shell) if formatted else None
        return audit, len(findings), findings, unformatted

    async def _choose_formatter(self, tree: Path, ruff_unformatted: list[str] | None) -> tuple[str | None, list[str]]:
        """The declared formatter and the files it would change ([] when none is declared)."""
        from pyagent.improve.project_config import ProjectConfigError, choose_formatter, python_files

        try:
            choice = choose_formatter(
                tree,
                override=self.formatter_override,
                python_file_count=len(python_files(tree)),
                ruff_unformatted=None if ruff_unformatted is None else len(ruff_unformatted),
            )
        except ProjectConfigError as exc:
            raise ImproveError(str(exc)) from exc
        self.settings["formatter"] = f"{choice.name or 'none'}: {choice.origin}"
        if choice.name == "black":
            from pyagent.agents import black

            if not black.available():
                self.notes.append(f"{choice.origin}, but black is not installed here: no formatting (pip install black)")
                return None, []
            return "black", await black.unformatted(tree, ["."], shell=self.shell)
        if choice.name == "ruff":
            return "ruff", ruff_unformatted or []
        return None, []

    def _plan(self, tree: Path, audit: AuditReport, findings: list[Any], formatter: str | None,
              unformatted: list[str], llm: Any, root_ctx: Any, knowledge: Any,
              warnings: list[WarningMatch] | None = None) -> Any:
        from pyagent.model.task import AgentTask
        from pyagent.pipeline.planner import Plan, candidates, plan_tasks

        if self.resumed is not None:  # the same plan; known outcomes are not redone
            tasks = [AgentTask.from_wire(t) for t in self.resumed.data["tasks"]]
            return Plan(tasks, [], {})
        cands = candidates(
            audit,
            findings,
            unformatted,
            llm=llm is not None,
            max_complexity=self.max_complexity,
            root=tree,
            formatter=formatter,
            exclude=self.exclude,
            agents=self.agent_filter,
            warnings=warnings or [],
            types=self.types,
        )
        return plan_tasks(
            tree,
            audit,
            cands,
            context=root_ctx,
            knowledge=knowledge,
            max_tasks=self.opts.max_tasks,
            params={"max_complexity": self.max_complexity},
        )
