"""``pyagent improve``: audit → plan → fleet → isolated change → gate → transaction → report.

Data flows one way. Every task runs in its own isolated copy (``LocalExecutor`` or a swarm
executor); a verified change is merged into the run's tree through a ``StateTransaction`` after a
base-hash check (a stale change is recomputed once on the new base, or dropped). In a git
repository the run's tree is a linked worktree on a new branch and every kept change is a commit;
outside git the project is changed in place only with ``in_place`` (``pyagent undo`` restores
it), otherwise the run is a dry run. The run works inside the project's own rules
(``improve.project_config``, ``improve.test_command``). SIGTERM/SIGHUP/SIGINT end it cleanly: no
worktree or temp dir is left, the report for what was done is written and memory is saved; a git
run's progress is on disk (``improve.run_state``) so ``resume`` continues one that was killed.

The phases live in their own modules, each a mixin over the run's shared state (``improve.run_base``):
``tree`` (where the run works), ``planning`` (rules, measurement, plan), ``baseline`` (the tests before
any change), ``tasks`` and ``merge`` (each task, its change and its retries), ``final_suite`` (the
whole suite once at the end, the commits' order). This module runs them in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.improve.final_suite import FinalPhase
from pyagent.improve.metrics import metrics_summary
from pyagent.improve.options import ImproveError, ImproveOptions, RunInterrupted
from pyagent.improve.planning import PlanningPhase
from pyagent.improve.result import RunResult, TaskRecord
from pyagent.improve.tasks import TaskPhase
from pyagent.improve.tree import TreeSetup
from pyagent.model.status import SkipReason, Status

if TYPE_CHECKING:
    from pyagent.agents.impact import TestImpact
    from pyagent.agents.llm.base import LLMClient, UsageMeter
    from pyagent.agents.test_results import TestResults
    from pyagent.agents.testing import TestAgent
    from pyagent.fleet.events import FleetEvent
    from pyagent.model.budget import Budget
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.pipeline.executor import Executor
    from pyagent.pipeline.planner import Plan
    from pyagent.pipeline.settings import PipelineSettings

__all__ = [
    "ImproveError",
    "ImproveOptions",
    "RunInterrupted",
    "RunResult",
    "TaskRecord",
    "improve",
]


class _Run(TreeSetup, PlanningPhase, TaskPhase, FinalPhase):
    """One run: its phases in order (each phase's module says what it does)."""

    # set as the run goes: what the report is made of
    budget: Budget
    meter: UsageMeter
    started: float
    baseline: TestResults | None
    metrics_before: dict[str, Any]
    gate_text: list[str]
    plan: Plan

    async def run(self) -> RunResult:
        if not self.path.is_dir():
            raise ImproveError(f"{self.opts.path} is not a directory; give the project's root folder")
        if self.opts.concurrency < 1:
            raise ImproveError("--concurrency must be at least 1")
        self._configure()
        await self._recover()
        started = time.monotonic()
        scratch = Path(tempfile.mkdtemp(prefix="pyagent-run-"))
        tree: Path | None = None
        try:
            tree, mode = await self._prepare_tree(scratch)
            self.mode = mode
            return await self._run_in(tree, mode, scratch, started)
        finally:
            if self.repo is not None and tree is not None:
                await self._remove_worktree(scratch)
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _run_in(self, tree: Path, mode: str, scratch: Path, started: float) -> RunResult:
        """Measure, baseline, plan, run the tasks, measure again, report."""
        from pyagent.model.context import CascadeContext
        from pyagent.model.knowledge import InMemoryKnowledge

        self.started = started
        llm = self._llm()
        audit_before, findings, formatter, unformatted = await self._measure_before(tree)
        phase_start = time.monotonic()
        self.types = self._types_request(tree)
        self.root_ctx = CascadeContext.root("improve", action=f"improve:{self.run_id}", budget=self.budget)
        tests, self.baseline, settings, impact = await self._baseline(tree, scratch)
        self.test_agent = tests
        self.phases["baseline"] = time.monotonic() - phase_start
        if self.resumed is not None and isinstance(self.resumed.data.get("metrics_before"), dict):
            self.metrics_before = self.resumed.data["metrics_before"]
        self.gate_text = self._gate_text()
        knowledge = self.opts.knowledge if self.opts.knowledge is not None else InMemoryKnowledge()
        executor = self._executor(tree, settings, llm, knowledge, scratch, impact)
        warned = await self._match_warnings(tree, self.baseline)
        self.plan = self._plan(
            tree, audit_before, findings, formatter, unformatted, llm, self.root_ctx, knowledge, warned
        )
        known = self._add_plan_records()
        if mode == "git":
            await self._open_run_state(scratch)
        self.progress(
            "plan",
            tasks=[r.to_dict() for r in self.records.values()],
            skipped=[s.__dict__ for s in self.plan.skipped],
        )
        events: list[FleetEvent] = []
        todo = [t for t in self.plan.tasks if t.id not in known]
        phase_start = time.monotonic()
        try:
            await self._fleet(todo, tree, executor, knowledge, events)
        except asyncio.CancelledError:
            await self._report_interrupted(mode, events)
            raise
        self.phases["tasks"] = time.monotonic() - phase_start
        self._remember()
        return await self._after_tasks(tree, mode, scratch, tests, impact, events)

    def _llm(self) -> LLMClient | None:
        """The run's LLM client (None offline), its usage meter and the run's one budget."""
        from pyagent.agents.llm.base import UsageMeter
        from pyagent.model.budget import Budget

        opts = self.opts
        budget = Budget(tokens=opts.budget_tokens, cost_usd=opts.budget_usd)
        meter = UsageMeter(on_call=lambda reply, totals: self.progress("llm", totals=totals))
        llm = opts.llm_client
        if llm is None and opts.llm:
            from pyagent.agents.llm.factory import LLMConfigError, make_llm

            try:
                llm = make_llm(
                    opts.llm, base_url=opts.llm_base_url, api=opts.llm_api, budget=budget, meter=meter,
                    local=opts.local_llm,
                )
            except LLMConfigError as exc:
                raise ImproveError(str(exc)) from exc
        if llm is not None:
            if llm.budget is None:
                llm.budget = budget
            budget = llm.budget  # one budget: the LLM calls and the task chains spend the same one
            meter = llm.meter
            meter.on_call = lambda reply, totals: self.progress("llm", totals=totals)
        self.budget, self.meter = budget, meter
        return llm

    async def _measure_before(self, tree: Path) -> tuple[Any, list[Any], str | None, list[str]]:
        """The project's lint rules, its health and findings, and its formatter, before any change."""
        from pyagent.improve.project_config import ProjectConfigError, lint_rules

        try:
            self.rules = lint_rules(tree)
        except ProjectConfigError as exc:
            raise ImproveError(str(exc)) from exc
        self.settings["lint"] = self.rules.origin
        self.progress("phase", phase="rules", detail=f"lint: {self.rules.origin}")
        self.progress("phase", phase="audit", detail=str(self.path))
        audit_before, n_before, findings, ruff_unformatted = await self._measure(tree)
        formatter, unformatted = await self._choose_formatter(tree, ruff_unformatted)
        self.progress("phase", phase="rules", detail=f"formatter: {self.settings['formatter']}")
        self.metrics_before = metrics_summary(audit_before, n_before, self.max_complexity, tree)
        return audit_before, findings, formatter, unformatted

    def _gate_text(self) -> list[str]:
        from pyagent.pipeline.gate import gate_rules

        baseline = self.baseline
        return gate_rules(
            self.rules.origin,
            f"{self.settings['tests']}, {len(baseline.outcomes)} tests" if baseline is not None else None,
        )

    def _executor(
        self,
        tree: Path,
        settings: PipelineSettings,
        llm: LLMClient | None,
        knowledge: KnowledgeBackend,
        scratch: Path,
        impact: TestImpact | None,
    ) -> Executor:
        """This machine's pipeline (one builder, as on peers), or the caller's executor around it (swarm, Ray)."""
        from pyagent.pipeline.builder import build_executor
        from pyagent.pipeline.executor import ExecutorSetup

        local = build_executor(
            tree, settings, shell=self.shell, tests=self.test_agent, baseline=self.baseline, llm=llm,
            knowledge=knowledge, scratch=scratch, impact=impact,
        )
        self.agents = local.agents
        if self.opts.executor_factory is None:
            return local
        return self.opts.executor_factory(ExecutorSetup(tree, local, settings, self.baseline, self.opts.llm))

    def _add_plan_records(self) -> dict[str, Any]:
        """A record per planned task; a resumed run restores the outcomes it knew (returned by task id)."""
        known = dict(self.resumed.data.get("outcomes", {})) if self.resumed is not None else {}
        for t in self.plan.tasks:
            rec = self._add_record(t)
            if t.id in known:
                rec.restore(known[t.id])
        return known

    async def _open_run_state(self, scratch: Path) -> None:
        """A git run's progress on disk, so ``--resume`` continues it after a kill."""
        from pyagent.improve.run_state import RunState

        if self.resumed is not None:
            self.state = self.resumed
            self.state.set(status="running", scratch=str(scratch), worktree=str(scratch / "worktree"))
            return
        self.state = await asyncio.to_thread(
            RunState.create,
            self.path,
            self.run_id,
            branch=self.branch,
            base_commit=self.base_commit,
            scratch=str(scratch),
            worktree=str(scratch / "worktree"),
            tasks=[t.to_wire() for t in self.plan.tasks],
            baseline=self.baseline.to_dict() if self.baseline is not None else None,
            metrics_before=self.metrics_before,
        )

    async def _report_interrupted(self, mode: str, events: list[FleetEvent]) -> None:
        """An interrupted run still reports what it did (and remembers it)."""
        self.interrupted = self.interrupted or "SIGINT"
        for rec in self.records.values():
            if rec.reason in ("", "cancelled"):
                rec.status, rec.reason = Status.SKIPPED, f"not attempted: the run was interrupted ({self.interrupted})"
        self._remember()
        result = self._result(mode, None, {})
        self.notes.append(
            f"interrupted by {self.interrupted}: the report covers what was done"
            + (f"; `pyagent improve {self.path} --resume` continues it" if self.branch else "")
        )
        await self._finish(result, events, status="interrupted")

    async def _after_tasks(
        self,
        tree: Path,
        mode: str,
        scratch: Path,
        tests: TestAgent | None,
        impact: TestImpact | None,
        events: list[FleetEvent],
    ) -> RunResult:
        """Group the commits, measure again, run the whole suite once, report."""
        if self.repo is not None and self.base_commit is not None:
            await self._group_commits(tree)
        self.progress("phase", phase="after", detail="re-measuring")
        audit_after, n_after, _f, _u = await self._measure(tree, formatted=False)
        phase_start = time.monotonic()
        baseline = self.baseline
        tests_after = await self._tests(tests, tree, scratch) if tests is not None else None
        if tests is not None and impact is not None and tests_after is not None and baseline is not None:
            tests_after = await self._drop_culprits(tree, tests, baseline, tests_after, scratch)
        self.phases["final"] = time.monotonic() - phase_start
        if mode == "git" and not any(r.commit for r in self.records.values()):
            self.drop_branch, self.branch = self.branch, None
            self.notes.append("no change was kept, so no branch was left behind")
        metrics_after = metrics_summary(audit_after, n_after, self.max_complexity, tree)
        result = self._result(mode, tests_after, metrics_after)
        await self._finish(result, events, status="done")
        return result

    def _result(self, mode: str, tests_after: TestResults | None, metrics_after: dict[str, Any]) -> RunResult:
        plan, baseline, meter, budget = self.plan, self.baseline, self.meter, self.budget
        return RunResult(
            run_id=self.run_id,
            root=self.path,
            mode=mode,
            tasks=list(self.records.values()),
            skipped_by_memory=[
                {"agent": s.agent, "action": s.action, "target": s.target, "reason": s.reason}
                for s in plan.skipped
                if s.why is SkipReason.KNOWN_FAILURE
            ],
            not_attempted=sum(1 for s in plan.skipped if s.why is not SkipReason.KNOWN_FAILURE),
            tests_before=baseline,
            tests_after=tests_after,
            metrics_before=self.metrics_before,
            metrics_after=metrics_after,
            usage=meter.to_dict() | {"budget": budget.to_wire()},
            duration=time.monotonic() - self.started,
            branch=self.branch,
            base_commit=self.base_commit,
            notes=self.notes,
            gate=self.gate_text,
            settings=dict(self.settings),
            interrupted=self.interrupted,
            agents=[a.identity() for a in (*self.agents.values(), *filter(None, [self.test_agent]))],
            phase_seconds={k: round(v, 3) for k, v in self.phases.items()},
            warnings=[dataclasses.asdict(w) for w in self.warned],
        )

    async def _finish(self, result: RunResult, events: list[FleetEvent], *, status: str) -> None:
        if result.mode == "in-place":
            from pyagent.improve.undo import save_run

            await asyncio.to_thread(save_run, self.path, self.run_id, self.originals)
        from pyagent.improve.report import write_report

        result.report_dir = self.report_dir = await asyncio.to_thread(write_report, result, events)
        if self.state is not None:
            await asyncio.to_thread(self.state.set, status=status)


async def improve(opts: ImproveOptions) -> RunResult:
    """Run one improvement pass over ``opts.path``; see the module docstring.

    SIGTERM and SIGHUP cancel the run like SIGINT does (cleanup and the report happen on the way
    out), then raise :class:`RunInterrupted`.
    """
    run = _Run(opts)
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    installed: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        if run.interrupted is None and me is not None:
            run.interrupted = sig.name
            me.cancel()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no such signal
            pass
    try:
        return await run.run()
    except asyncio.CancelledError:
        if run.interrupted in ("SIGTERM", "SIGHUP") and me is not None:
            me.uncancel()
            raise RunInterrupted(signal.Signals[run.interrupted], run.report_dir) from None
        raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
