"""One task of a run, start to end: run it (here or on a peer), record its change, merge it, retry it.

A task that the gate rejected is delegated again as a child task when its agent can use the reason
(the child joins the parent's lineage and spends the chain's one budget). The fleet runs the tasks by
priority; every finished task's outcome goes to memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.improve.merge import MergePhase
from pyagent.improve.result import TaskRecord
from pyagent.model.status import Status
from pyagent.model.task import AgentTask, ChangeSet
from pyagent.model.verification import Verdict

if TYPE_CHECKING:
    from pyagent.fleet.core import TaskControl
    from pyagent.fleet.events import FleetEvent
    from pyagent.pipeline.executor import Executor

__all__ = ["TaskPhase"]


class TaskPhase(MergePhase):
    """The fleet's jobs: each planned task, and the retries they delegate."""

    async def _task(self, control: TaskControl, task: AgentTask, tree: Path, executor: Executor) -> None:
        from pyagent.agents.llm.base import LLMError
        from pyagent.model.errors import CascadeLimitError

        rec = self.records[task.id]
        start = time.monotonic()
        try:
            if self.budget_stop:
                rec.status, rec.reason = Status.SKIPPED, f"budget exhausted: {self.budget_stop}"
                return
            await control.checkpoint()
            async with self.file_locks.setdefault(task.target, asyncio.Lock()):
                await self._execute_and_merge(task, rec, tree, executor)
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

    async def _execute_and_merge(self, task: AgentTask, rec: TaskRecord, tree: Path, executor: Executor) -> None:
        """Run the task on the tree's current bytes and merge a verified change; a change whose base
        moved meanwhile is recomputed once on the new base, then dropped."""
        from pyagent.state import ConflictError

        for attempt in (1, 2):
            files = {p: (tree / p).read_bytes() for p in task.files if (tree / p).is_file()}
            cs = await executor.execute(task, files)
            self._record_change(rec, cs, files)
            if not cs.passed:
                return
            try:
                await self._merge(tree, task, cs, rec)
            except ConflictError as exc:
                if attempt == 2:
                    rec.status, rec.reason = Status.FAILED, f"conflict: {exc} changed again; change dropped"
                continue
            rec.status, rec.reason = Status.KEPT, cs.verification.reason
            return

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
        rec.diff = "".join(_file_diff(p, files.get(p), new) for p, new in sorted(cs.changes.items()))
        rec.base_hash = cs.base_hashes.get(rec.target, rec.base_hash)
        if verdict is Verdict.NOOP:
            rec.status, rec.reason = Status.SKIPPED, "nothing to change (already fixed by an earlier change)"
        elif verdict is Verdict.ERROR:
            rec.status, rec.reason = Status.FAILED, cs.reason
        elif not cs.passed:
            rec.status, rec.reason = Status.ROLLED_BACK, cs.reason

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


def _file_diff(path: str, old: bytes | None, new: bytes | None) -> str:
    a = (old or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    b = (new or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, f"a/{path}", f"b/{path}"))
