"""What a remote node calls to run one task it received: the same executor and gate as a local run.

The node holds a copy of the project in ``workdir``; the task's files arrive with the task and
overlay that copy. The origin's :class:`PipelineSettings` arrive with it too, and the pipeline is
built by the same builder as the origin's. The test baseline travels in ``task.params["baseline"]``
(a ``TestResults`` dict) so every node judges against the same reference; without it the node
records its own first.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pyagent.agents.test_results import TestResults
from pyagent.model.task import AgentTask, ChangeSet
from pyagent.pipeline.builder import (
    build_executor,
    make_test_agent,
    pipeline_shell,
    run_tests,
)
from pyagent.pipeline.settings import PipelineSettings

if TYPE_CHECKING:
    from pyagent.agents.impact import TestImpact

__all__ = ["execute_task_async"]


async def execute_task_async(
    task: AgentTask,
    files: dict[str, bytes],
    *,
    workdir: str | os.PathLike[str],
    settings: PipelineSettings,
    baseline: TestResults | None = None,
    impact: TestImpact | None = None,
) -> ChangeSet:
    """``baseline`` and ``impact`` are the origin's (a Ray worker receives them once per run); without
    a baseline the one in ``task.params`` is used, else the node records its own."""
    shell = pipeline_shell()
    tests = make_test_agent(workdir, settings, shell)
    if tests is None:
        baseline = None
    elif baseline is None:
        wire = task.params.get("baseline")
        if isinstance(wire, dict):
            baseline = TestResults.from_dict(wire)
        else:  # the node's own baseline, as a test task of the chain that sent the task
            baseline = await run_tests(tests, tests.task(task.context, task_id=f"{task.id}/baseline"), workdir)
    # Peers get no LLM: the origin keeps LLM tasks (see SwarmExecutor._offline_agents).
    executor = build_executor(workdir, settings, shell=shell, tests=tests, baseline=baseline, impact=impact)
    return await executor.execute(task, files)

