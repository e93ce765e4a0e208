"""``pyagent improve``: audit → plan → fleet → isolated change → gate → transaction → report.

Data flows one way. Every task runs in its own isolated copy (``LocalExecutor`` or a swarm
executor); a verified change is merged into the run's tree through a ``StateTransaction`` after a
base-hash check (a stale change is recomputed once on the new base, or dropped). In a git
repository the run's tree is a linked worktree on a new branch and every kept change is a commit;
elsewhere the project is changed in place and ``pyagent undo`` restores it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.improve.result import RunResult, TaskRecord
from pyagent.model.task import AgentTask, ChangeSet, content_hash

if TYPE_CHECKING:
    from pyagent.agents.base import BaseAgent
    from pyagent.agents.llm.base import LLMClient
    from pyagent.agents.llm.factory import LocalBackend
    from pyagent.agents.testing import TestResults
    from pyagent.fleet.core import TaskControl
    from pyagent.fleet.events import FleetEvent
    from pyagent.health import AuditReport
    from pyagent.improve.gitops import GitRepo
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.pipeline.executor import Executor, ExecutorFactory
    from pyagent.shell import SecureShell

__all__ = ["ImproveError", "ImproveOptions", "RunResult", "TaskRecord", "improve", "new_run_id"]


def _outside_task(task: AgentTask, cs: ChangeSet) -> list[str]:
    """Paths a change set would write that are not the task's own files (compared exactly)."""
    from pyagent.pipeline.workspace import safe_relpath

    allowed = {safe_relpath(f) for f in task.files}
    return sorted(p for p in cs.changes if p not in allowed)


class ImproveError(Exception):
    """A run that cannot start (bad path, bad options); the message says what to do."""


@dataclass
class ImproveOptions:
    path: str | os.PathLike[str]
    llm: str | None = None
    llm_base_url: str | None = None
    llm_api: str = "auto"
    test_cmd: str | None = None
    max_tasks: int | None = None
    budget_usd: float | None = None
    budget_tokens: int | None = None
    concurrency: int = 2
    dry_run: bool = False
    max_complexity: int = 10
    test_timeout: float = 300.0
    use_git: bool = True
    executor_factory: ExecutorFactory | None = None
    knowledge: KnowledgeBackend | None = None
    on_progress: Callable[[dict[str, Any]], None] | None = None
    run_id: str | None = None
    llm_client: LLMClient | None = None  # a ready client (tests, embedding); wins over ``llm``
    test_env: dict[str, str] = field(default_factory=dict)  # extra variables for the test command
    local_llm: LocalBackend | None = None  # what `--llm local:DIR` runs on, passed in by the CLI


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def _diff(path: str, old: bytes | None, new: bytes | None) -> str:
    a = (old or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    b = (new or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, f"a/{path}", f"b/{path}"))


def metrics_summary(audit: AuditReport, findings: int, max_complexity: int) -> dict[str, Any]:
    """The run's before/after numbers (what the report compares)."""
    ok = [f for f in audit.files if not f.error]
    mis = [f.mi for f in ok if f.mi is not None]
    fns = [fn.complexity for f in ok for fn in f.functions]
    return {
        "files": len(audit.files),
        "functions": len(fns),
        "mi_avg": round(sum(mis) / len(mis), 3) if mis else None,
        "mi_min": round(min(mis), 3) if mis else None,
        "complexity_avg": round(sum(fns) / len(fns), 3) if fns else None,
        "complexity_max": max(fns, default=0),
        "functions_over_threshold": sum(1 for c in fns if c > max_complexity),
        "ruff_findings": findings,
    }


class _Run:
    def __init__(self, opts: ImproveOptions) -> None:
        from pyagent.improve.gitops import GIT_ENV_ALLOW
        from pyagent.pipeline.builder import pipeline_shell
        from pyagent.shell import Confinement, SecureShell

        self.opts = opts
        self.path = Path(opts.path).resolve()
        self.run_id = opts.run_id or new_run_id()
        self.shell: SecureShell = pipeline_shell()
        # git is PyAgent's own fixed argv on the user's repository (it must write .git): not confined.
        self.git_shell: SecureShell = SecureShell(env_allow=GIT_ENV_ALLOW, timeout=600.0, confine=Confinement.off())
        self.records: dict[str, TaskRecord] = {}
        self.tasks: dict[str, AgentTask] = {}  # planned tasks and the retries they delegated, in that order
        self.file_locks: dict[str, asyncio.Lock] = {}
        self.merge_lock = asyncio.Lock()
        self.applied: set[str] = set()
        self.originals: dict[str, bytes | None] = {}
        self.notes: list[str] = []
        self.budget_stop: str | None = None
        self.repo: GitRepo | None = None
        self.branch: str | None = None
        self.base_commit: str | None = None
        self.drop_branch: str | None = None
        self.mode = ""
        self.agents: dict[str, BaseAgent] = {}  # this machine's agents: they authorize every merge

    def progress(self, kind: str, **data: Any) -> None:
        if self.opts.on_progress is not None:
            try:
                self.opts.on_progress({"kind": kind, "run_id": self.run_id, **data})
            except (Exception, SystemExit) as exc:  # a broken display (closed pipe) must not break the run
                self.opts.on_progress = None
                self.notes.append(f"progress display stopped: {type(exc).__name__}")

    # -- setup ------------------------------------------------------------------------------
    async def _prepare_tree(self, scratch: Path) -> tuple[Path, str]:
        from pyagent.improve.gitops import GitRepo
        from pyagent.pipeline.workspace import isolated_copy, project_files

        if self.opts.dry_run:
            files = project_files(self.path)
            copy = await asyncio.to_thread(
                isolated_copy, self.path, parent=scratch, files=files
            )
            return copy, "dry-run"
        repo = await GitRepo.find(self.path, self.git_shell) if self.opts.use_git else None
        if repo is None:
            return self.path, "in-place"
        self.repo = repo
        self.base_commit, _ = await repo.head()
        self.branch = f"pyagent/{self.run_id}"
        wt = scratch / "worktree"
        await repo.add_worktree(wt, self.branch)
        rel = (
            self.path.relative_to(repo.toplevel.resolve()) if self.path != repo.toplevel.resolve() else Path()
        )
        status = await repo.git("status", "--porcelain", "--untracked-files=no")
        if status.strip():
            self.notes.append(
                "the working tree has uncommitted changes; the run works on the last commit (HEAD)"
            )
        return wt / rel, "git"

    # -- merging ----------------------------------------------------------------------------
    def _merge_sync(self, tree: Path, cs: ChangeSet) -> list[str]:
        from pyagent.state import ConflictError, StateTransaction

        with StateTransaction(tree) as tx:
            for path, data in cs.changes.items():
                current = tx.read_bytes(path) if tx.exists(path) else None
                if content_hash(current if current is not None else b"") != cs.base_hashes.get(path):
                    raise ConflictError(path)
                if path not in self.originals:
                    self.originals[path] = current
                if data is None:
                    tx.delete(path)
                else:
                    tx.write_bytes(path, data)
        return sorted(cs.changes)

    async def _merge(self, tree: Path, task: AgentTask, cs: ChangeSet, rec: TaskRecord) -> None:
        from pyagent.agents.mixins.governance import GovernanceError

        agent = self.agents.get(task.agent)
        if agent is None:
            raise GovernanceError(f"no agent named {task.agent!r} on this machine may change {task.target}")
        agent.authorize_change(task, cs.changes, tree)  # the executor's check again: a peer's change set too
        async with self.merge_lock:
            if cs.digest in self.applied:
                return
            paths = await asyncio.to_thread(self._merge_sync, tree, cs)
            self.applied.add(cs.digest)
            if self.mode == "in-place":  # undo works even if the run is interrupted later
                from pyagent.improve.undo import save_run

                await asyncio.to_thread(save_run, self.path, self.run_id, dict(self.originals))
            if self.repo is not None:
                rec.commit = await self.repo.commit(tree, paths, self._commit_message(task, rec))

    def _commit_message(self, task: AgentTask, rec: TaskRecord) -> str:
        metrics = rec.verification.get("metrics", {}).get(task.target, {})
        parts = []
        mi = metrics.get("mi") or [None, None]
        if mi[0] is not None and mi[1] is not None:
            parts.append(f"MI {mi[0]:.2f} -> {mi[1]:.2f}")
        ruff = metrics.get("ruff")
        if ruff:
            parts.append(f"ruff findings {ruff[0]} -> {ruff[1]}")
        for qn, (old, new) in (metrics.get("complexity") or {}).items():
            if old is not None:
                parts.append(f"complexity of {qn} {old} -> {new}")
        tests = rec.verification.get("tests") or {}
        if tests:
            parts.append(f"tests {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed")
        return (
            f"pyagent: {task.params.get('action', task.agent)} in {task.target}\n\n"
            f"What: {rec.note}\nWhy: {self._why(task)}\nMetrics: {'; '.join(parts) or 'unchanged'}\n"
            f"Run: {self.run_id}, task {task.id}\n"
        )

    @staticmethod
    def _why(task: AgentTask) -> str:
        if task.agent == "refactor":
            return f"complexity {task.params.get('complexity')} is over the threshold {task.params.get('max_complexity')}"
        if task.agent == "docstring":
            return "public code without docstrings"
        if task.agent == "format":
            return "the file was not formatted consistently"
        return f"ruff {task.params.get('rule')}: {task.params.get('message')}"

    # -- one task ----------------------------------------------------------------------------
    async def _task(self, control: TaskControl, task: AgentTask, tree: Path, executor: Executor) -> None:
        from pyagent.agents.llm.base import LLMError
        from pyagent.model.errors import CascadeLimitError
        from pyagent.state import ConflictError

        rec = self.records[task.id]
        start = time.monotonic()
        try:
            if self.budget_stop:
                rec.status, rec.reason = "skipped", f"budget exhausted: {self.budget_stop}"
                return
            await control.checkpoint()
            lock = self.file_locks.setdefault(task.target, asyncio.Lock())
            async with lock:
                for attempt in (1, 2):
                    files = {p: (tree / p).read_bytes() for p in task.files if (tree / p).is_file()}
                    cs = await executor.execute(task, files)
                    self._record_change(rec, cs, files)
                    if not cs.passed:
                        break
                    stray = _outside_task(task, cs)
                    if stray:  # a peer (or a broken agent) returned files the task may not change
                        rec.status = "failed"
                        rec.reason = (
                            f"rejected at merge: the change set touches {', '.join(stray)}, "
                            f"outside the task's files {sorted(task.files)}; nothing merged"
                        )
                        self.notes.append(f"task {task.id}: {rec.reason}")
                        break
                    try:
                        await self._merge(tree, task, cs, rec)
                    except ConflictError as exc:
                        if attempt == 2:
                            rec.status, rec.reason = (
                                "failed",
                                f"conflict: {exc} changed again; change dropped",
                            )
                        continue
                    rec.status, rec.reason = "kept", cs.verification.get("reason", "verified")
                    break
            if rec.status == "rolled_back":
                self._retry(control, task, rec, tree, executor)
        except CascadeLimitError as exc:
            self.budget_stop = self.budget_stop or exc.reason
            rec.status, rec.reason = "failed", exc.reason
        except (LLMError, OSError, RuntimeError, ValueError) as exc:
            rec.status, rec.reason = "failed", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # one broken task must not lose the run's record of it
            rec.status, rec.reason = "failed", f"unexpected {type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            rec.status, rec.reason = "failed", "cancelled"
            raise
        finally:
            rec.duration = time.monotonic() - start
            self.progress("task", task=rec.to_dict())

    def _retry(self, control: TaskControl, task: AgentTask, rec: TaskRecord, tree: Path, executor: Executor) -> None:
        """Delegate a rejected change to its agent again as a child task that carries the gate's reason.

        The child's context is the parent's ``next_level``: it joins the parent's lineage and spends
        the chain's one budget, and the depth limit and loop detection apply to it.
        """
        from pyagent.model.errors import CascadeLimitError

        agent = self.agents.get(task.agent)
        attempt = int(task.params.get("retry", 0)) + 1
        if agent is None or attempt > agent.retries or self.budget_stop:
            return
        reason = rec.reason

        async def child_job(child: TaskControl) -> None:
            retry = dataclasses.replace(
                task, id=child.context.task_id, context=child.context,
                params={**task.params, "retry": attempt, "rejected_because": reason},
            )
            self._add_record(retry)
            await self._task(child, retry, tree, executor)

        try:
            agent.delegate(control, f"retry {attempt}: {rec.action}", child_job)
        except CascadeLimitError as exc:
            rec.note = f"{rec.note}; not retried: {exc.reason}" if rec.note else f"not retried: {exc.reason}"

    def _add_record(self, t: AgentTask) -> TaskRecord:
        self.tasks[t.id] = t
        rec = self.records[t.id] = TaskRecord(
            t.id,
            t.agent,
            str(t.params.get("action", t.agent)),
            t.target,
            t.priority.name.lower(),
            lineage=t.context.lineage_ids(),
        )
        return rec

    def _job(
        self, task: AgentTask, tree: Path, executor: Executor
    ) -> Callable[[TaskControl], Awaitable[None]]:
        async def job(control: TaskControl) -> None:
            await self._task(control, task, tree, executor)

        return job

    def _record_change(self, rec: TaskRecord, cs: ChangeSet, files: dict[str, bytes]) -> None:
        status = cs.verification.get("status")
        rec.verification = {k: v for k, v in cs.verification.items() if k != "status"}
        rec.tokens += int(cs.usage.get("tokens", 0) or 0)
        rec.cost += float(cs.usage.get("cost", 0.0) or 0.0)
        rec.note = str(cs.usage.get("note") or cs.reason)
        rec.diff = "".join(_diff(p, files.get(p), new) for p, new in sorted(cs.changes.items()))
        rec.base_hash = cs.base_hashes.get(rec.target, rec.base_hash)
        if status == "noop":
            rec.status, rec.reason = "skipped", "nothing to change (already fixed by an earlier change)"
        elif status == "error":
            rec.status, rec.reason = "failed", cs.reason
        elif not cs.passed:
            rec.status, rec.reason = "rolled_back", cs.reason

    # -- the whole run -----------------------------------------------------------------------
    async def run(self) -> RunResult:
        if not self.path.is_dir():
            raise ImproveError(f"{self.opts.path} is not a directory; give the project's root folder")
        if self.opts.concurrency < 1:
            raise ImproveError("--concurrency must be at least 1")
        from pyagent.state.recovery import ensure_recovered

        # a transaction killed before its commit point must not be measured or built upon
        recovered = await asyncio.to_thread(ensure_recovered, self.path)
        if recovered is not None:
            self.notes.append(
                f"rolled back interrupted transaction {recovered.txid} first "
                f"({len(recovered.restored)} restored, {len(recovered.removed)} removed)"
            )
        started = time.monotonic()
        scratch = Path(tempfile.mkdtemp(prefix="pyagent-run-"))
        tree: Path | None = None
        try:
            tree, mode = await self._prepare_tree(scratch)
            self.mode = mode
            return await self._run_in(tree, mode, scratch, started)
        finally:
            if self.repo is not None and tree is not None:
                try:
                    await self.repo.remove_worktree(scratch / "worktree")
                    if self.drop_branch is not None:
                        await self.repo.delete_branch(self.drop_branch)
                except RuntimeError as exc:
                    self.notes.append(f"cleanup: {exc}")
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _measure(self, tree: Path) -> tuple[AuditReport, int, list[Any], list[str]]:
        from pyagent.agents import ruff
        from pyagent.health import CodeHealthAuditor

        audit = await asyncio.to_thread(CodeHealthAuditor().audit_path, tree)
        findings = await ruff.check(tree, ["."], shell=self.shell)
        unformatted = await ruff.unformatted(tree, ["."], shell=self.shell)
        return audit, len(findings), findings, unformatted

    async def _tests(self, runner: Any, tree: Path, scratch: Path) -> TestResults:
        from pyagent.pipeline.builder import run_tests

        return await run_tests(runner, tree, scratch)

    async def _run_in(self, tree: Path, mode: str, scratch: Path, started: float) -> RunResult:
        from pyagent.agents.llm.base import UsageMeter
        from pyagent.fleet.core import FleetManager
        from pyagent.model.budget import Budget
        from pyagent.model.context import CascadeContext
        from pyagent.model.knowledge import InMemoryKnowledge
        from pyagent.pipeline.builder import build_executor, make_test_runner
        from pyagent.pipeline.executor import ExecutorSetup
        from pyagent.pipeline.planner import candidates, plan_tasks
        from pyagent.pipeline.settings import PipelineSettings

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
        self.progress("phase", phase="audit", detail=str(self.path))
        audit_before, n_before, findings, unformatted = await self._measure(tree)
        metrics_before = metrics_summary(audit_before, n_before, opts.max_complexity)
        settings = PipelineSettings(
            test_cmd=opts.test_cmd, test_timeout=opts.test_timeout, test_env=dict(opts.test_env),
            max_complexity=opts.max_complexity,
        )
        try:
            runner = make_test_runner(tree, settings, self.shell)
        except ValueError as exc:
            raise ImproveError(f"--test-cmd: {exc}") from exc
        baseline = None
        if runner is not None:
            self.progress("phase", phase="baseline", detail=" ".join(runner.command.argv))
            baseline = await self._tests(runner, tree, scratch)
            if baseline.timed_out:
                raise ImproveError(
                    f"the test baseline timed out after {opts.test_timeout:.0f}s; pass --test-cmd"
                )
        else:
            self.notes.append("no tests found: changes were verified by parsing, lint and metrics only")
        knowledge = opts.knowledge if opts.knowledge is not None else InMemoryKnowledge()
        local = build_executor(
            tree, settings, shell=self.shell, runner=runner, baseline=baseline, llm=llm, knowledge=knowledge,
            scratch=scratch,
        )
        self.agents = local.agents
        executor: Executor = local
        if opts.executor_factory is not None:
            executor = opts.executor_factory(ExecutorSetup(tree, local, settings, baseline, opts.llm))
        root_ctx = CascadeContext.root("improve", action=f"improve:{self.run_id}", budget=budget)
        cands = candidates(
            audit_before,
            findings,
            unformatted,
            llm=llm is not None,
            max_complexity=opts.max_complexity,
            root=tree,
        )
        plan = plan_tasks(
            tree,
            audit_before,
            cands,
            context=root_ctx,
            knowledge=knowledge,
            max_tasks=opts.max_tasks,
            params={"max_complexity": opts.max_complexity},
        )
        for t in plan.tasks:
            self._add_record(t)
        self.progress(
            "plan",
            tasks=[r.to_dict() for r in self.records.values()],
            skipped=[s.__dict__ for s in plan.skipped],
        )
        events: list[FleetEvent] = []
        async with FleetManager(opts.concurrency, on_event=events.append, knowledge=knowledge) as fleet:
            fleet.add_listener(lambda e: self.progress("fleet", event=e.to_dict()))
            for t in plan.tasks:
                fleet.submit(
                    f"{t.agent}:{t.target}",
                    self._job(t, tree, executor),
                    priority=t.priority,
                    context=t.context,
                    kind=t.kind,
                )
            await fleet.join()
        closed = await executor.aclose()
        if closed:
            self.notes.append(closed)
        for t in self.tasks.values():
            rec = self.records[t.id]
            self.agents[t.agent].record_outcome(t, rec.status, rec.reason or None)  # type: ignore[arg-type]
        self.progress("phase", phase="after", detail="re-measuring")
        audit_after, n_after, _f, _u = await self._measure(tree)
        tests_after = await self._tests(runner, tree, scratch) if runner is not None else None
        if mode == "git" and not any(r.commit for r in self.records.values()):
            self.drop_branch, self.branch = self.branch, None
            self.notes.append("no change was kept, so no branch was left behind")
        result = RunResult(
            run_id=self.run_id,
            root=self.path,
            mode=mode,
            tasks=list(self.records.values()),
            skipped_by_memory=[
                {"agent": s.agent, "action": s.action, "target": s.target, "reason": s.reason}
                for s in plan.skipped
                if s.reason.startswith("known to fail")
            ],
            not_attempted=sum(1 for s in plan.skipped if not s.reason.startswith("known to fail")),
            tests_before=baseline,
            tests_after=tests_after,
            metrics_before=metrics_before,
            metrics_after=metrics_summary(audit_after, n_after, opts.max_complexity),
            usage=meter.to_dict() | {"budget": budget.to_wire()},
            duration=time.monotonic() - started,
            branch=self.branch,
            base_commit=self.base_commit,
            notes=self.notes,
            agents=[agent.identity() for agent in self.agents.values()],
        )
        if mode == "in-place":
            from pyagent.improve.undo import save_run

            save_run(self.path, self.run_id, self.originals)
        from pyagent.improve.report import write_report

        result.report_dir = write_report(result, events)
        return result


async def improve(opts: ImproveOptions) -> RunResult:
    """Run one improvement pass over ``opts.path``; see the module docstring."""
    return await _Run(opts).run()

