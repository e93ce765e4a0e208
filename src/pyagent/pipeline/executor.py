"""Where a task runs. ``LocalExecutor`` runs it here, in an isolated copy, through the gate.

An executor only produces a verified (or rejected) change set; merging it into the real tree is the
run's job, so a change computed on another machine is merged exactly like a local one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pyagent.agents.mixins.governance import GovernanceError
from pyagent.model.task import AgentTask, ChangeSet, content_hash
from pyagent.model.verification import Usage, Verdict, Verification
from pyagent.pipeline.workspace import copy_files, isolated_copy, safe_relpath

if TYPE_CHECKING:
    from pyagent.agents.base import BaseAgent
    from pyagent.agents.test_results import TestResults
    from pyagent.pipeline.gate import VerificationGate
    from pyagent.pipeline.settings import PipelineSettings

__all__ = ["Executor", "ExecutorFactory", "ExecutorSetup", "LocalExecutor", "SlotLimited"]


class Executor(Protocol):
    """Runs one task somewhere and returns its change set (verification included)."""

    async def execute(self, task: AgentTask, files: dict[str, bytes]) -> ChangeSet: ...

    async def aclose(self) -> str | None:
        """Release what the executor holds (a swarm's sockets); returns a line for the report, or None."""
        ...


@runtime_checkable
class SlotLimited(Protocol):
    """An executor whose backend runs a fixed number of tasks at once (a Ray cluster's free slots).

    The run sizes its fleet to it, so the tasks beyond that wait in our priority queue rather than
    in a backend queue that knows no priorities.
    """

    def slots(self) -> int: ...


def _unjudged(task: AgentTask, verdict: Verdict, reason: str, base: dict[str, str], usage: Usage) -> ChangeSet:
    """A change set for an attempt that never reached the gate (agent error, governance, no change)."""
    return ChangeSet(task.id, {}, base, Verification(verdict, reason), reason, usage)


class LocalExecutor:
    """Runs agents in a private copy of ``root`` (no inode shared with it) and judges the result with ``gate``.

    ``files`` given to :meth:`execute` are the task files' current bytes (the base the change is
    computed from); they overlay the copy, so the result never depends on what the tree holds later.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        agents: Mapping[str, BaseAgent],
        gate: VerificationGate,
        scratch: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.agents = dict(agents)
        self.gate = gate
        self.scratch = scratch
        self._listing: list[str] | None = None

    async def aclose(self) -> str | None:
        return None  # holds nothing between tasks

    def refresh_listing(self) -> None:
        """Forget the cached file listing (call after files were created or deleted in the tree)."""
        self._listing = None

    async def execute(self, task: AgentTask, files: dict[str, bytes]) -> ChangeSet:
        agent = self.agents.get(task.agent)
        if agent is None:
            return _unjudged(task, Verdict.ERROR, f"no agent named {task.agent!r} here", {}, Usage())
        try:
            agent.authorize(task, self.root)  # the same check improve repeats before merging
        except GovernanceError as exc:
            return _unjudged(task, Verdict.ERROR, f"governance: {exc}", {}, Usage())
        base = {safe_relpath(p): content_hash(b) for p, b in files.items()}
        if self._listing is None:
            self._listing = await asyncio.to_thread(copy_files, self.root)
        ws = await asyncio.to_thread(
            isolated_copy,
            self.root,
            overlay=files,
            parent=self.scratch,
            files=self._listing,
        )
        try:
            targets = [safe_relpath(f) for f in task.files]
            before = await self.gate.measure(ws, targets)
            originals = {p: (ws / p).read_bytes() if (ws / p).is_file() else None for p in targets}
            outcome = await agent.run(task, ws)
            if outcome.error:
                return _unjudged(task, Verdict.ERROR, outcome.error, base, outcome.usage)
            changes: dict[str, bytes | None] = {}
            for p in targets:
                now = (ws / p).read_bytes() if (ws / p).is_file() else None
                if now != originals[p]:
                    changes[p] = now
            if not changes:
                return _unjudged(task, Verdict.NOOP, "the agent made no change", base, outcome.usage)
            from pyagent.pipeline.gate import LINT_KINDS

            verdict = await self.gate.verify(task, ws, before, changes, judge_health=task.kind not in LINT_KINDS)
            return ChangeSet(
                task_id=task.id,
                changes=changes,
                base_hashes=base,
                verification=verdict,
                reason=outcome.note if verdict.passed else verdict.reason,
                usage=outcome.usage,
                note=outcome.note,
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, ws, True)


@dataclass(frozen=True)
class ExecutorSetup:
    """What a run hands an executor factory (``improve --swarm``): enough to run tasks elsewhere.

    ``baseline`` is the run's test baseline (send it as ``task.params["baseline"]`` via
    ``TestResults.to_dict()`` so remote gates judge against the same reference); ``local`` is this
    machine's executor, for tasks no peer takes.
    """

    root: Path
    local: LocalExecutor
    settings: PipelineSettings
    baseline: TestResults | None
    llm: str | None


ExecutorFactory = Callable[[ExecutorSetup], Executor]
