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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import os
import secrets
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.improve.result import RunResult, TaskRecord
from pyagent.model.status import SkipReason, Status
from pyagent.model.task import AgentTask, ChangeSet, content_hash
from pyagent.model.verification import Verdict

if TYPE_CHECKING:
    from pyagent.agents.base import BaseAgent
    from pyagent.agents.deprecation import WarningMatch
    from pyagent.agents.impact import TestImpact
    from pyagent.agents.llm.base import LLMClient
    from pyagent.agents.llm.factory import LocalBackend
    from pyagent.agents.testing import TestResults, TestRunner
    from pyagent.fleet.core import TaskControl
    from pyagent.fleet.events import FleetEvent
    from pyagent.health import AuditReport
    from pyagent.improve.gitops import GitRepo
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.pipeline.executor import Executor, ExecutorFactory
    from pyagent.pipeline.planner import TypesRequest
    from pyagent.shell import SecureShell

__all__ = [
    "ImproveError",
    "ImproveOptions",
    "RunInterrupted",
    "RunResult",
    "TaskRecord",
    "improve",
    "new_run_id",
]


class ImproveError(Exception):
    """A run that cannot start (bad path, bad options); the message says what to do."""


class RunInterrupted(Exception):
    """SIGTERM or SIGHUP ended the run after it cleaned up and wrote its report."""

    def __init__(self, signum: int, report_dir: Path | None) -> None:
        self.signum = signum
        self.report_dir = report_dir
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


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
    max_complexity: int | None = None  # None: [tool.pyagent] max-complexity, else 10
    test_timeout: float = 300.0
    use_git: bool = True
    in_place: bool = False  # outside git: change files in place (else the run is a dry run)
    formatter: str | None = None  # ruff | black | none | auto; None: [tool.pyagent], else auto
    allow_few_tests: bool | None = None  # gate on a baseline of 0 or 1 test
    agents: tuple[str, ...] | None = None  # None: [tool.pyagent] agents, else all
    exclude: tuple[str, ...] = ()  # added to [tool.pyagent] exclude
    resume: bool = False  # continue the newest unfinished git run of this project
    executor_factory: ExecutorFactory | None = None
    knowledge: KnowledgeBackend | None = None
    on_progress: Callable[[dict[str, Any]], None] | None = None
    run_id: str | None = None
    llm_client: LLMClient | None = None  # a ready client (tests, embedding); wins over ``llm``
    test_env: dict[str, str] = field(default_factory=dict)  # extra variables for the test command
    full_tests: bool = False  # verify every change with the whole suite (no test-impact selection)
    local_llm: LocalBackend | None = None  # what `--llm local:DIR` runs on, passed in by the CLI


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def _diff(path: str, old: bytes | None, new: bytes | None) -> str:
    a = (old or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    b = (new or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, f"a/{path}", f"b/{path}"))


def metrics_summary(
    audit: AuditReport, findings: int | None, max_complexity: int, root: Path | None = None
) -> dict[str, Any]:
    """The run's before/after numbers (what the report compares); with ``root``, also how many of the
    project's (non-test) functions are fully annotated."""
    ok = [f for f in audit.files if not f.error]
    annotated: dict[str, Any] = {}
    if root is not None:
        from pyagent.agents.impact import is_test_path
        from pyagent.agents.typehints import annotated_functions

        full = 0
        for f in ok:
            if not is_test_path(f.path):
                try:
                    full += annotated_functions((root / f.path).read_text(encoding="utf-8"))[0]
                except (OSError, UnicodeDecodeError):
                    continue
        annotated["annotated_functions"] = full
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
        **annotated,
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
        self.tasks: dict[str, AgentTask] = {}  # planned tasks and the retries they delegated, in that order
        self.records: dict[str, TaskRecord] = {}
        self.file_locks: dict[str, asyncio.Lock] = {}
        self.merge_lock = asyncio.Lock()
        self.applied: set[str] = set()  # digests of merged change sets
        self.merged_tasks: set[str] = set()  # ids of tasks whose change set was merged
        self.originals: dict[str, bytes | None] = {}
        self.notes: list[str] = []
        self.budget_stop: str | None = None
        self.repo: GitRepo | None = None
        self.branch: str | None = None
        self.base_commit: str | None = None
        self.drop_branch: str | None = None
        self.mode = ""
        self.tree_rel = Path()  # the project's folder inside the repository
        self.warned: list[WarningMatch] = []
        self.agents: dict[str, BaseAgent] = {}  # this machine's agents: they authorize every merge
        self.max_complexity = 10
        self.interrupted: str | None = None
        self.state: Any = None  # RunState of a git run
        self.resumed: Any = None  # the RunState being resumed
        self.report_dir: Path | None = None
        from pyagent.agents.ruff import LintRules

        self.rules = LintRules()
        self.settings: dict[str, str] = {}
        self.phases: dict[str, float] = {}  # seconds of the baseline, the tasks and the final suite
        self.types: TypesRequest | None = None  # the types agent's request (None: not planned)

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
        from pyagent.pipeline.workspace import copy_files, copy_untracked, isolated_copy

        if self.opts.dry_run:
            files = copy_files(self.path)
            copy = await asyncio.to_thread(
                isolated_copy, self.path, parent=scratch, files=files
            )
            return copy, "dry-run"
        repo = await GitRepo.find(self.path, self.git_shell) if self.opts.use_git else None
        if repo is None:
            if self.opts.resume:
                raise ImproveError("--resume continues a git run; this project is not in a git repository")
            if self.opts.in_place or not self.opts.use_git:
                return self.path, "in-place"
            self.notes.append(
                f"{self.path} is not in a git repository, so nothing was changed (a dry run); pass "
                "--in-place to apply verified changes to the files directly (`pyagent undo PATH` reverts them)"
            )
            self.opts.dry_run = True
            return await self._prepare_tree(scratch)
        self.repo = repo
        wt = scratch / "worktree"
        if self.opts.resume:
            await self._resume_worktree(repo, wt)
        else:
            self.base_commit, _ = await repo.head()
            self.branch = f"pyagent/{self.run_id}"
            await repo.add_worktree(wt, self.branch)
        rel = (
            self.path.relative_to(repo.toplevel.resolve()) if self.path != repo.toplevel.resolve() else Path()
        )
        self.tree_rel = rel
        # the checkout holds only what git tracks; the tests may need the rest (a generated version.py)
        await asyncio.to_thread(copy_untracked, self.path, wt / rel)
        status = await repo.git("status", "--porcelain", "--untracked-files=no")
        if status.strip():
            self.notes.append(
                "the working tree has uncommitted changes; the run works on the last commit (HEAD)"
            )
        return wt / rel, "git"

    async def _resume_worktree(self, repo: GitRepo, wt: Path) -> None:
        """Check out the killed run's branch again; what the killed run left behind is removed."""
        from pyagent.improve.run_state import latest_unfinished

        state = latest_unfinished(self.path)
        if state is None:
            raise ImproveError(f"--resume: no unfinished run of {self.path} was found (.pyagent/runs)")
        branch = str(state.data["branch"])
        if not (await repo.git("branch", "--list", branch)).strip():
            raise ImproveError(f"--resume: the run's branch {branch} no longer exists; start a new run")
        old = state.data.get("worktree")
        if old:
            with contextlib.suppress(RuntimeError):
                await repo.remove_worktree(Path(old))
            await asyncio.to_thread(shutil.rmtree, Path(old).parent, True)
        await repo.git("worktree", "prune")
        await repo.git("worktree", "add", "--quiet", os.fspath(wt), branch)
        self.resumed, self.run_id, self.branch = state, str(state.data["run_id"]), branch
        self.base_commit = str(state.data["base_commit"])
        self.notes.append(f"resumed run {self.run_id} on branch {branch}")

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
            if cs.digest in self.applied or task.id in self.merged_tasks:
                return  # at most once per change and per task, wherever and however often it ran
            paths = await asyncio.to_thread(self._merge_sync, tree, cs)
            self.applied.add(cs.digest)
            self.merged_tasks.add(task.id)
            if self.mode == "in-place":  # undo works even if the run is interrupted later
                from pyagent.improve.undo import save_run

                await asyncio.to_thread(save_run, self.path, self.run_id, dict(self.originals))
            if self.repo is not None:
                rec.commit = await self.repo.commit(tree, paths, self._commit_message(task, rec))

    def _commit_message(self, task: AgentTask, rec: TaskRecord) -> str:
        verification = rec.verification
        metrics = verification.metrics.get(task.target, {}) if verification is not None else {}
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
        tests = verification.tests if verification is not None else {}
        if tests:
            parts.append(f"tests {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed")
        return (
            f"pyagent: {task.params.get('action', task.agent)} in {task.target}\n\n"
            f"What: {rec.note}\nWhy: {self._why(task)}\nMetrics: {'; '.join(parts) or 'unchanged'}\n"
            f"Run: {self.run_id}, task {task.id}\n"
        )

    @staticmethod
    def _why(task: AgentTask) -> str:
        if task.agent == "deadcode":
            return "nothing in the project refers to it (vulture's reference analysis and a text search)"
        if task.agent in ("refactor", "complexity"):
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
                rec.status, rec.reason = Status.SKIPPED, f"budget exhausted: {self.budget_stop}"
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
                    try:
                        await self._merge(tree, task, cs, rec)
                    except ConflictError as exc:
                        if attempt == 2:
                            rec.status, rec.reason = (
                                Status.FAILED,
                                f"conflict: {exc} changed again; change dropped",
                            )
                        continue
                    rec.status, rec.reason = Status.KEPT, cs.verification.reason
                    break
            if rec.status is Status.ROLLED_BACK:
                self._retry(control, task, rec, tree, executor)
        except CascadeLimitError as exc:
            self.budget_stop = self.budget_stop or exc.reason
            rec.status, rec.reason = Status.FAILED, exc.reason
        except (LLMError, OSError, RuntimeError, ValueError) as exc:
            rec.status, rec.reason = Status.FAILED, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # one broken task must not lose the run's record of it
            rec.status, rec.reason = Status.FAILED, f"unexpected {type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            rec.status, rec.reason = Status.FAILED, "cancelled"
            raise
        finally:
            rec.duration = time.monotonic() - start
            if self.state is not None and rec.reason != "cancelled":
                await asyncio.to_thread(self.state.record, task.id, rec.to_dict())
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
        verdict = cs.verification.verdict
        rec.verification = cs.verification
        rec.tokens += cs.usage.tokens
        rec.cost += cs.usage.cost
        rec.note = cs.note or cs.reason
        rec.diff = "".join(_diff(p, files.get(p), new) for p, new in sorted(cs.changes.items()))
        rec.base_hash = cs.base_hashes.get(rec.target, rec.base_hash)
        if verdict is Verdict.NOOP:
            rec.status, rec.reason = Status.SKIPPED, "nothing to change (already fixed by an earlier change)"
        elif verdict is Verdict.ERROR:
            rec.status, rec.reason = Status.FAILED, cs.reason
        elif not cs.passed:
            rec.status, rec.reason = Status.ROLLED_BACK, cs.reason

    # -- the whole run -----------------------------------------------------------------------
    async def run(self) -> RunResult:
        if not self.path.is_dir():
            raise ImproveError(f"{self.opts.path} is not a directory; give the project's root folder")
        if self.opts.concurrency < 1:
            raise ImproveError("--concurrency must be at least 1")
        self._configure()
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
                with contextlib.suppress(RuntimeError):
                    if (
                        self.drop_branch is None
                        and self.branch
                        and self.base_commit
                        and not await self.repo.branch_has_commits(self.branch, self.base_commit)
                    ):
                        self.drop_branch = self.branch  # an interrupted run that kept nothing
                try:
                    await self.repo.remove_worktree(scratch / "worktree")
                    if self.drop_branch is not None:
                        await self.repo.delete_branch(self.drop_branch)
                except RuntimeError as exc:
                    self.notes.append(f"cleanup: {exc}")
            await asyncio.to_thread(shutil.rmtree, scratch, True)

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
        self.config = cfg
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

    async def _tests(self, runner: Any, tree: Path, scratch: Path) -> TestResults:
        from pyagent.pipeline.builder import run_tests

        return await run_tests(runner, tree, scratch)

    async def _drop_culprits(
        self, tree: Path, runner: TestRunner, baseline: TestResults, after: TestResults, scratch: Path
    ) -> TestResults:
        """Changes verified by selected tests, checked by one full suite; culprits are found and reverted."""
        from pyagent.improve.bisect import first_bad_commit, regressions_at
        from pyagent.improve.gitops import GitError

        # tests that ran and now fail, or fail anew; a test id that merely vanished is not blamed on a
        # change here (parametrized ids built from unordered data differ from run to run)
        regs = after.selected_regressions(baseline)
        if not regs:
            self.notes.append("the final full test suite passed on the branch")
            return after
        if self.repo is None or self.base_commit is None:
            self.notes.append(
                f"the final full test suite has {len(regs)} regression(s) ({', '.join(regs[:3])}); "
                "outside git they are not bisected: rerun with --full-tests"
            )
            return after
        repo = self.repo

        async def check(path: Path) -> list[str]:
            return (await runner.run(path)).selected_regressions(baseline)

        async def fails(commit: str) -> bool:
            return bool(await regressions_at(repo, commit, self.tree_rel, check))

        for _ in range(3):
            by_commit = {r.commit: r for r in self.records.values() if r.status is Status.KEPT and r.commit}
            order = (await repo.git("rev-list", "--reverse", f"{self.base_commit}..HEAD", cwd=tree)).split()
            culprit = await first_bad_commit([c for c in order if c in by_commit], fails)
            if culprit is None:
                break
            rec = by_commit[culprit]
            try:
                await repo.git("revert", "--no-edit", culprit, cwd=tree)
            except GitError as exc:
                self.notes.append(f"could not revert {culprit[:10]} ({exc}); the branch keeps it")
                break
            rec.status = Status.ROLLED_BACK
            rec.reason = (
                f"the final full suite failed ({', '.join(regs[:3])}); bisecting the kept commits found this "
                f"change ({culprit[:10]}), which was reverted on the branch"
            )
            self.notes.append(f"dropped {rec.action} in {rec.target}: it broke the full suite (found by bisect)")
            after = await self._tests(runner, tree, scratch)
            regs = after.selected_regressions(baseline)
            if not regs:
                self.notes.append("the final full test suite passed on the branch after dropping the culprit(s)")
                return after
        self.notes.append(f"the final full test suite still has {len(regs)} regression(s): {', '.join(regs[:3])}")
        return after


    async def _match_warnings(self, tree: Path, baseline: TestResults | None) -> list[WarningMatch]:
        """The baseline's deprecation warnings inside the project, each with the ruff rule that fixes it."""
        from pyagent.agents import ruff
        from pyagent.agents.deprecation import DEPRECATION_RULES, match_warnings

        if baseline is None or not baseline.warnings:
            return []
        files = sorted({w[0] for w in baseline.warnings if (tree / w[0]).is_file()})
        rules = ruff.LintRules(("--select", ",".join(DEPRECATION_RULES)), "the deprecation rules")
        found = await ruff.check(tree, files, rules=rules, shell=self.shell) if files else []
        self.warned = match_warnings(baseline.warnings, found)
        return self.warned


    async def _covered_baseline(
        self, runner: TestRunner, tree: Path, scratch: Path
    ) -> tuple[TestResults, TestImpact | None]:
        """The baseline run in a throwaway copy; unless ``--full-tests``, under coverage with per-test contexts."""
        from pyagent.agents.typetrace import read_trace
        from pyagent.pipeline.workspace import isolated_copy, project_files

        if self.opts.full_tests and self.types is None:
            return await self._tests(runner, tree, scratch), None
        ws = await asyncio.to_thread(isolated_copy, tree, parent=scratch)
        try:
            with tempfile.TemporaryDirectory(prefix="pyagent-types-", dir=scratch) as tmp:
                out = Path(tmp) / "types.json" if self.types is not None else None
                if self.opts.full_tests:
                    results, impact = await runner.run(ws, trace_out=out), None
                else:
                    files = await asyncio.to_thread(project_files, ws)
                    results, impact = await runner.record_impact(ws, files, trace_out=out)
                if out is not None and self.types is not None:
                    traced = read_trace(out, ws)
                    self.types = dataclasses.replace(
                        self.types,
                        traced={p: {q: f.to_params() for q, f in fns.items()} for p, fns in traced.items()},
                    )
            return results, impact
        finally:
            await asyncio.to_thread(shutil.rmtree, ws, True)

    def _types_request(self, tree: Path) -> TypesRequest | None:
        """The types agent's request when the project type-checks or opted in (``agents`` names it)."""
        from pyagent.agents.typehints import min_python, type_checker
        from pyagent.pipeline.planner import TypesRequest

        checker = type_checker(tree)
        named = self.agent_filter is not None and "types" in self.agent_filter
        if self.agent_filter is not None and not named:
            return None
        if checker is None and not named:
            self.notes.append(
                "types: the project configures no type checker (mypy, pyright), so no annotations were added "
                "(--agents types, or \"types\" in [tool.pyagent] agents, opts in)"
            )
            return None
        self.settings["types"] = (
            f"annotations checked by {checker} (no new errors) and the tests" if checker
            else "annotations opted in; no type checker configured, so the tests alone check them"
        )
        return TypesRequest(checker, {}, min_python(tree))


    async def _baseline(
        self, tree: Path, scratch: Path
    ) -> tuple[Any, TestResults | None, Any, TestImpact | None]:
        """The project's declared test command, its baseline and the run's pipeline settings.

        Refuses a baseline of 0 or 1 test unless allowed.
        """
        from pyagent.improve.test_command import TestCommandError, choose_test_command
        from pyagent.pipeline.builder import make_test_runner
        from pyagent.pipeline.settings import PipelineSettings

        opts = self.opts
        try:
            chosen = choose_test_command(tree, self.test_cmd, self.configured_test_cmd)
        except TestCommandError as exc:
            raise ImproveError(str(exc)) from exc
        self.settings["tests"] = chosen.describe()
        self.progress("phase", phase="tests", detail=chosen.describe())
        command = chosen.command
        settings = PipelineSettings(
            test_cmd=shlex.join(command.argv) if command is not None else None,
            test_timeout=opts.test_timeout,
            test_env=dict(opts.test_env),
            max_complexity=self.max_complexity,
            lint_args=self.rules.args,
        )
        if command is None:
            if not self.allow_few_tests:
                raise ImproveError(
                    f"{self.path} has no tests we can run ({chosen.source}), so no change could be checked "
                    "against them: pass --test-cmd CMD, or --allow-few-tests to gate on lint and parsing only"
                )
            self.notes.append("no tests found: changes were verified by parsing, lint and metrics only")
            return None, None, settings, None
        runner = make_test_runner(tree, settings, self.shell)
        if self.resumed is not None and isinstance(self.resumed.data.get("baseline"), dict):
            from pyagent.agents.testing import TestResults

            self.notes.append("resumed: the remaining changes are verified by the full suite")
            return runner, TestResults.from_dict(self.resumed.data["baseline"]), settings, None
        self.progress("phase", phase="baseline", detail=shlex.join(command.argv))
        assert runner is not None
        baseline, impact = await self._covered_baseline(runner, tree, scratch)
        if baseline.timed_out:
            raise ImproveError(f"the test baseline timed out after {opts.test_timeout:.0f}s; pass --test-cmd")
        if baseline.passed == 0 and len(baseline.outcomes) > 1 and not self.allow_few_tests:
            raise ImproveError(
                f"none of the {len(baseline.outcomes)} tests of {chosen.describe()} passed before any change "
                f"(e.g. {sorted(baseline.outcomes)[0]}), so no change could be judged by them: make the suite "
                "pass here (is the project installed?) or pass --test-cmd"
            )
        if len(baseline.outcomes) <= 1 and not self.allow_few_tests:
            tail = baseline.output_tail.strip().splitlines()[-3:]
            raise ImproveError(
                f"the baseline of {chosen.describe()} ran {len(baseline.outcomes)} test(s) (exit "
                f"{baseline.exit_code}{': ' + ' / '.join(tail) if tail else ''}); a change cannot be judged by so "
                "few: pass --test-cmd with the command that runs the suite, or --allow-few-tests"
            )
        if baseline.note:
            self.notes.append(f"test baseline: {baseline.note}")
        if baseline.sandbox:
            refused = "; ".join(baseline.sandbox[1:])
            self.notes.append(f"test baseline ran under {baseline.sandbox[0]}"
                              + (f"; the sandbox refused: {refused}" if refused else "; it refused nothing the tests printed"))
        if impact is not None:
            self.notes.append(
                f"test-impact selection: {len(impact.by_file)} files mapped to the test files that run them; "
                f"{len(impact.uncovered)} test file(s) without coverage data run for every change "
                "(--full-tests runs the whole suite instead)"
            )
        elif not self.opts.full_tests:
            self.notes.append("no test-impact data (the test command cannot run under coverage): full suite per change")
        return runner, baseline, settings, impact

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

    async def _run_in(self, tree: Path, mode: str, scratch: Path, started: float) -> RunResult:
        from pyagent.agents.llm.base import UsageMeter
        from pyagent.improve.project_config import ProjectConfigError, lint_rules
        from pyagent.model.budget import Budget
        from pyagent.model.context import CascadeContext
        from pyagent.model.knowledge import InMemoryKnowledge
        from pyagent.pipeline.builder import build_executor
        from pyagent.pipeline.executor import ExecutorSetup
        from pyagent.pipeline.gate import gate_rules

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
        metrics_before = metrics_summary(audit_before, n_before, self.max_complexity, tree)
        phase_start = time.monotonic()
        self.types = self._types_request(tree)
        runner, baseline, settings, impact = await self._baseline(tree, scratch)
        self.phases["baseline"] = time.monotonic() - phase_start
        if self.resumed is not None and isinstance(self.resumed.data.get("metrics_before"), dict):
            metrics_before = self.resumed.data["metrics_before"]
        gate_text = gate_rules(
            self.rules.origin,
            f"{self.settings['tests']}, {len(baseline.outcomes)} tests" if baseline is not None else None,
        )
        knowledge = opts.knowledge if opts.knowledge is not None else InMemoryKnowledge()
        local = build_executor(
            tree, settings, shell=self.shell, runner=runner, baseline=baseline, llm=llm, knowledge=knowledge,
            scratch=scratch, impact=impact,
        )
        self.agents = local.agents
        executor: Executor = local
        if opts.executor_factory is not None:
            executor = opts.executor_factory(ExecutorSetup(tree, local, settings, baseline, opts.llm))
        root_ctx = CascadeContext.root("improve", action=f"improve:{self.run_id}", budget=budget)
        warned = await self._match_warnings(tree, baseline)
        plan = self._plan(tree, audit_before, findings, formatter, unformatted, llm, root_ctx, knowledge, warned)
        known = dict(self.resumed.data.get("outcomes", {})) if self.resumed is not None else {}
        for t in plan.tasks:
            rec = self._add_record(t)
            if t.id in known:
                rec.restore(known[t.id])
        if mode == "git":
            from pyagent.improve.run_state import RunState

            if self.resumed is not None:
                self.state = self.resumed
                self.state.set(status="running", scratch=str(scratch), worktree=str(scratch / "worktree"))
            else:
                self.state = await asyncio.to_thread(
                    RunState.create,
                    self.path,
                    self.run_id,
                    branch=self.branch,
                    base_commit=self.base_commit,
                    scratch=str(scratch),
                    worktree=str(scratch / "worktree"),
                    tasks=[t.to_wire() for t in plan.tasks],
                    baseline=baseline.to_dict() if baseline is not None else None,
                    metrics_before=metrics_before,
                )
        self.progress(
            "plan",
            tasks=[r.to_dict() for r in self.records.values()],
            skipped=[s.__dict__ for s in plan.skipped],
        )
        events: list[FleetEvent] = []
        todo = [t for t in plan.tasks if t.id not in known]
        phase_start = time.monotonic()
        try:
            await self._fleet(todo, tree, executor, knowledge, events)
        except asyncio.CancelledError:
            self.interrupted = self.interrupted or "SIGINT"
            for rec in self.records.values():
                if rec.reason in ("", "cancelled"):
                    rec.status, rec.reason = Status.SKIPPED, f"not attempted: the run was interrupted ({self.interrupted})"
            self._remember()
            result = self._result(
                plan, mode, baseline, None, metrics_before, {}, meter, budget, started, gate_text
            )
            self.notes.append(
                f"interrupted by {self.interrupted}: the report covers what was done"
                + (f"; `pyagent improve {self.path} --resume` continues it" if self.branch else "")
            )
            await self._finish(result, events, status="interrupted")
            raise
        self.phases["tasks"] = time.monotonic() - phase_start
        self._remember()
        if self.repo is not None and self.base_commit is not None:
            await self._group_commits(tree)
        self.progress("phase", phase="after", detail="re-measuring")
        audit_after, n_after, _f, _u = await self._measure(tree, formatted=False)
        phase_start = time.monotonic()
        tests_after = await self._tests(runner, tree, scratch) if runner is not None else None
        if runner is not None and impact is not None and tests_after is not None and baseline is not None:
            tests_after = await self._drop_culprits(tree, runner, baseline, tests_after, scratch)
        self.phases["final"] = time.monotonic() - phase_start
        if mode == "git" and not any(r.commit for r in self.records.values()):
            self.drop_branch, self.branch = self.branch, None
            self.notes.append("no change was kept, so no branch was left behind")
        metrics_after = metrics_summary(audit_after, n_after, self.max_complexity, tree)
        result = self._result(
            plan, mode, baseline, tests_after, metrics_before, metrics_after, meter, budget, started, gate_text
        )
        await self._finish(result, events, status="done")
        return result

    async def _group_commits(self, tree: Path) -> None:
        """Order the branch's commits theme by theme (lint, modernisation, ...) for the reviewer."""
        from pyagent.pipeline.planner import AGENT_ORDER

        assert self.repo is not None and self.base_commit is not None
        wt = tree  # inside the run's worktree (a project below the repository root is a subfolder)
        created = (await self.repo.git("rev-list", "--reverse", f"{self.base_commit}..HEAD", cwd=wt)).split()
        by_sha = {r.commit: r for r in self.records.values() if r.commit}
        if len(created) < 2 or set(created) != set(by_sha):
            return

        def theme(sha: str) -> tuple[int, int]:
            agent = by_sha[sha].agent
            return (AGENT_ORDER.index(agent) if agent in AGENT_ORDER else len(AGENT_ORDER), created.index(sha))

        order = sorted(created, key=theme)
        if order == created:
            return
        mapping = await self.repo.reorder(wt, self.base_commit, order)
        if mapping is None:
            self.notes.append("the commits could not be grouped by theme without changing the result; kept as made")
            return
        for rec in by_sha.values():
            rec.commit = mapping[rec.commit or ""]
        self.notes.append("commits were grouped by theme (lint, modernisation, simplification, formatting, ...)")

    async def _fleet(
        self, tasks: list[AgentTask], tree: Path, executor: Executor, knowledge: Any, events: list[FleetEvent]
    ) -> None:
        from pyagent.fleet.core import FleetManager
        from pyagent.pipeline.executor import SlotLimited

        size = self.opts.concurrency
        if isinstance(executor, SlotLimited):  # as many at once as the backend has slots, the rest wait here
            size = executor.slots()
            self.notes.append(f"{size} task(s) at once: the executor's free slots (--concurrency applies to local runs)")
        async with FleetManager(size, on_event=events.append, knowledge=knowledge) as fleet:
            fleet.add_listener(lambda e: self.progress("fleet", event=e.to_dict()))
            for t in tasks:
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

    def _remember(self) -> None:
        """Every finished task's outcome goes to memory (also when the run was interrupted)."""
        for t in self.tasks.values():
            rec = self.records[t.id]
            if rec.reason.startswith("not attempted") or t.agent not in self.agents:
                continue
            self.agents[t.agent].record_outcome(t, rec.status, rec.reason or None)

    def _result(
        self,
        plan: Any,
        mode: str,
        baseline: TestResults | None,
        tests_after: TestResults | None,
        metrics_before: dict[str, Any],
        metrics_after: dict[str, Any],
        meter: Any,
        budget: Any,
        started: float,
        gate_text: list[str],
    ) -> RunResult:
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
            metrics_before=metrics_before,
            metrics_after=metrics_after,
            usage=meter.to_dict() | {"budget": budget.to_wire()},
            duration=time.monotonic() - started,
            branch=self.branch,
            base_commit=self.base_commit,
            notes=self.notes,
            gate=gate_text,
            settings=dict(self.settings),
            interrupted=self.interrupted,
            agents=[agent.identity() for agent in self.agents.values()],
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
