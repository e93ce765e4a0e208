"""The one place the improve pipeline is assembled: test agent, gate, agents, executor.

A local run and a Voyager peer both build through here from the same :class:`PipelineSettings`
(a peer receives them with the task), so a change is judged by the same test command, environment,
timeout, allow-list and complexity limit wherever it was computed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pyagent.agents.registry import build_agents
from pyagent.agents.ruff import LintRules
from pyagent.agents.test_results import TestResults
from pyagent.agents.testing import TEST_ENV_ALLOW, TestAgent, discover_tests
from pyagent.pipeline.executor import LocalExecutor
from pyagent.pipeline.gate import VerificationGate
from pyagent.pipeline.settings import PipelineSettings
from pyagent.pipeline.workspace import isolated_copy
from pyagent.shell import SecureShell

if TYPE_CHECKING:
    from pyagent.agents.impact import TestImpact
    from pyagent.agents.llm.base import LLMClient
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.model.task import AgentTask

__all__ = ["build_executor", "make_test_agent", "pipeline_shell", "run_tests"]

SHELL_TIMEOUT = 600.0


def pipeline_shell(*extra_env_allow: str) -> SecureShell:
    """The sandboxed shell agents, gate and tests run in (a run adds git's variables for its own use)."""
    return SecureShell(env_allow=tuple(dict.fromkeys((*TEST_ENV_ALLOW, *extra_env_allow))), timeout=SHELL_TIMEOUT)


def make_test_agent(tree: str | os.PathLike[str], settings: PipelineSettings, shell: SecureShell) -> TestAgent | None:
    """The project's test agent (``settings.test_cmd`` or the command discovered), or None without tests.

    A bad ``test_cmd`` raises ``ValueError``.
    """
    command = discover_tests(tree, settings.test_cmd)
    if command is None:
        return None
    if settings.test_env:
        command = dataclasses.replace(command, extra_env={**command.extra_env, **settings.test_env})
    return TestAgent(command, shell, timeout=settings.test_timeout)


async def run_tests(
    agent: TestAgent, task: AgentTask, tree: str | os.PathLike[str], scratch: str | os.PathLike[str] | None = None
) -> TestResults:
    """Run the test ``task`` (see :meth:`TestAgent.task`) in a throwaway copy of ``tree``, so it cannot
    change it; the baseline, the final suite and a peer's own baseline all run through here."""
    ws = await asyncio.to_thread(isolated_copy, tree, parent=scratch)
    try:
        outcome = await agent.run(task, ws)
    finally:
        await asyncio.to_thread(shutil.rmtree, ws, True)
    if outcome.tests is None:
        raise RuntimeError(outcome.error or "the test agent reported no test run")
    return outcome.tests


def build_executor(
    tree: str | os.PathLike[str],
    settings: PipelineSettings,
    *,
    shell: SecureShell,
    tests: TestAgent | None,
    baseline: TestResults | None,
    llm: LLMClient | None = None,
    knowledge: KnowledgeBackend | None = None,
    scratch: str | os.PathLike[str] | None = None,
    impact: TestImpact | None = None,
) -> LocalExecutor:
    """The executor that runs agents on ``tree`` and judges their changes against ``baseline``.

    With ``impact`` (the baseline's test-impact map) the gate runs only the tests exercising a change.
    """
    rules = LintRules(settings.lint_args)
    gate = VerificationGate(tests=tests, baseline=baseline, shell=shell, rules=rules, impact=impact)
    agents = build_agents(shell, llm, max_complexity=settings.max_complexity, knowledge=knowledge, rules=rules)
    return LocalExecutor(Path(tree), agents=agents, gate=gate, scratch=scratch)
