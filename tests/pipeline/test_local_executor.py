"""LocalExecutor and execute_task_async: real ruff agents in isolated copies, judged by the real gate."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyagent.agents.registry import build_agents
from pyagent.agents.testing import TestAgent
from pyagent.model.context import CascadeContext
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask, ChangeSet, content_hash
from pyagent.model.verification import Check, Verdict
from pyagent.pipeline.executor import LocalExecutor
from pyagent.pipeline.gate import VerificationGate
from pyagent.pipeline.remote import execute_task_async
from pyagent.pipeline.settings import PipelineSettings
from tests.improve_helpers import make_project, pytest_command, run_test_agent

MOD = "pkg/mod.py"


def _task(agent: str, rule: str = "", files: tuple[str, ...] = (MOD,)) -> AgentTask:
    return AgentTask(
        id=f"{agent}-{rule or 'x'}",
        agent=agent,
        kind="ruff-fix",
        target=files[0],
        files=files,
        priority=AgentPriority.STANDARD,
        context=CascadeContext.root("improve"),
        params={"rule": rule} if rule else {},
    )


def _executor(root: Path, tmp: Path) -> LocalExecutor:
    agent = TestAgent(pytest_command(root))
    gate = VerificationGate(tests=agent, baseline=run_test_agent(agent, root))
    return LocalExecutor(root, agents=build_agents(), gate=gate, scratch=tmp)


def _run(ex: LocalExecutor, root: Path, task: AgentTask) -> ChangeSet:
    return asyncio.run(ex.execute(task, {f: (root / f).read_bytes() for f in task.files}))


def test_safe_fixes_are_verified_and_the_real_tree_is_untouched(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    original = (root / MOD).read_bytes()
    ex = _executor(root, tmp_path)
    cs = _run(ex, root, _task("modernize", "UP006"))
    assert cs.passed, cs.reason
    assert cs.verification.verdict is Verdict.VERIFIED
    assert b"list[int]" in (cs.changes[MOD] or b"")
    assert cs.base_hashes == {MOD: content_hash(original)}
    assert (root / MOD).read_bytes() == original
    assert "UP006" in cs.reason


def test_side_effect_import_removal_is_rejected_by_the_tests(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    cs = _run(_executor(root, tmp_path), root, _task("lint", "F401"))
    assert not cs.passed
    assert cs.verification.check is Check.TESTS
    assert "test_plugin_registered" in cs.reason
    assert cs.changes  # the rejected change is kept for the report's diff


def test_noop_unknown_agent_and_foreign_rule(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    ex = _executor(root, tmp_path)
    assert _run(ex, root, _task("lint", "E711", files=("pkg/registry.py",))).verification.verdict is Verdict.NOOP
    assert "no agent named" in _run(ex, root, _task("wizard")).reason
    assert "does not own rule" in _run(ex, root, _task("lint", "UP006")).reason
    assert list(tmp_path.glob("pyagent-ws-*")) == []  # every isolated copy was removed


def test_change_is_computed_from_the_files_sent_not_the_tree(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    ex = _executor(root, tmp_path)
    sent = (root / MOD).read_bytes().replace(b"List[int]", b"List[str]")
    cs = asyncio.run(ex.execute(_task("modernize", "UP006"), {MOD: sent}))
    assert b"list[str]" in (cs.changes[MOD] or b"")
    assert cs.base_hashes[MOD] == content_hash(sent)


def test_execute_task_for_remote_nodes(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    task = AgentTask.from_wire(_task("simplify", "RET505").to_wire())
    cs = asyncio.run(execute_task_async(task, {MOD: (root / MOD).read_bytes()}, workdir=root, settings=PipelineSettings()))
    assert cs.passed, cs.reason
    assert b"else:" not in (cs.changes[MOD] or b"")
    assert ChangeSet.from_wire(cs.to_wire()).digest == cs.digest


def test_the_chain_scope_governs_what_a_task_may_do(tmp_path: Path) -> None:
    from dataclasses import replace

    from pyagent.model.context import SecurityScope

    root = make_project(tmp_path / "p")
    ex = _executor(root, tmp_path)
    original = (root / MOD).read_bytes()
    cases = [
        (SecurityScope(paths=("docs",)), "not under the allowed paths"),
        (SecurityScope(write=False), "read-only"),
        (SecurityScope(commands=("pytest",)), "needs 'ruff'"),
    ]
    for scope, message in cases:
        task = _task("modernize", "UP006")
        task = replace(task, context=replace(task.context, scope=scope))
        cs = _run(ex, root, task)
        assert cs.verification.verdict is Verdict.ERROR and message in cs.reason, cs.reason
        assert not cs.changes
    assert (root / MOD).read_bytes() == original
