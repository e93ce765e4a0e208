"""What a remote node calls to run one task it received: the same executor and gate as a local run.

The node holds a copy of the project in ``workdir``; the task's files arrive with the task and
overlay that copy. The test baseline travels in ``task.params["baseline"]`` (a ``TestResults`` dict)
so every node judges against the same reference; without it the node records its own first.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyagent.model.task import AgentTask, ChangeSet

if TYPE_CHECKING:
    from pyagent.agents.llm.base import LLMClient

__all__ = ["execute_task", "execute_task_async"]


async def execute_task_async(
    task: AgentTask,
    files: dict[str, bytes],
    *,
    workdir: str | os.PathLike[str],
    test_cmd: str | Sequence[str] | None = None,
    llm: LLMClient | None = None,
) -> ChangeSet:
    from pyagent.agents.registry import build_agents
    from pyagent.agents.testing import TestResults, TestRunner, discover_tests
    from pyagent.pipeline.executor import LocalExecutor
    from pyagent.pipeline.gate import VerificationGate
    from pyagent.pipeline.workspace import isolated_copy

    command = discover_tests(workdir, test_cmd or task.params.get("test_cmd"))
    runner = TestRunner(command) if command else None
    baseline = None
    if runner is not None:
        wire = task.params.get("baseline")
        if isinstance(wire, dict):
            baseline = TestResults.from_dict(wire)
        else:
            ws = await asyncio.to_thread(isolated_copy, workdir)
            try:
                baseline = await runner.run(ws)
            finally:
                await asyncio.to_thread(shutil.rmtree, ws, True)
    gate = VerificationGate(tests=runner, baseline=baseline)
    max_c = int(task.params.get("max_complexity", 10))
    executor = LocalExecutor(workdir, agents=build_agents(llm=llm, max_complexity=max_c), gate=gate)
    return await executor.execute(task, files)


def execute_task(
    task: AgentTask,
    files: dict[str, bytes],
    *,
    workdir: str | os.PathLike[str],
    test_cmd: str | Sequence[str] | None = None,
) -> ChangeSet:
    """Blocking form for a node's worker thread; inside an event loop use :func:`execute_task_async`."""
    return asyncio.run(execute_task_async(task, files, workdir=workdir, test_cmd=test_cmd))
