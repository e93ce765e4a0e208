"""Merging a verified change into the run's tree: authorized again, applied once, as one transaction and commit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from pyagent.improve.run_base import RunBase
from pyagent.model.task import AgentTask, ChangeSet, content_hash

if TYPE_CHECKING:
    from pyagent.improve.result import TaskRecord

__all__ = ["MergePhase"]


class MergePhase(RunBase):
    """Applies change sets (from this machine or a peer) to the run's tree."""

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
                rec.commit = await self.repo.commit(tree, paths, _commit_message(task, rec, self.run_id))


def _commit_message(task: AgentTask, rec: TaskRecord, run_id: str) -> str:
    """What, why and the measured change of one kept task, for its commit."""
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
        f"What: {rec.note}\nWhy: {_why(task)}\nMetrics: {'; '.join(parts) or 'unchanged'}\n"
        f"Run: {run_id}, task {task.id}\n"
    )


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
