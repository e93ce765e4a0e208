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

from pyagent.agents.testing import TestResults
from pyagent.model.task import AgentTask, ChangeSet
from pyagent.pipeline.builder import (
    build_executor,
    make_test_runner,
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
    runner = make_test_runner(workdir, settings, shell)
    if runner is None:
        baseline = None
    elif baseline is None:
        wire = task.params.get("baseline")
        baseline = TestResults.from_dict(wire) if isinstance(wire, dict) else await run_tests(runner, workdir)
    # Peers get no LLM: the origin keeps LLM tasks (see SwarmExecutor._offline_agents).
    executor = build_executor(workdir, settings, shell=shell, runner=runner, baseline=baseline, impact=impact)
    return await executor.execute(task, files)

