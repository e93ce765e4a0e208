"""The planner: worst file first, one task per safe-fixable rule and file, memory vetoes, route weights."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyagent.agents import ruff
from pyagent.health import CodeHealthAuditor
from pyagent.model.context import CascadeContext
from pyagent.model.knowledge import ChangeOutcome, InMemoryKnowledge
from pyagent.model.priority import AgentPriority
from pyagent.model.task import content_hash
from pyagent.pipeline.planner import candidates, plan_tasks
from tests.improve_helpers import make_project

CLEAN = '"""Clean."""\n\n\ndef f(x):\n    return x\n'


def _plan(root: Path, **kw: object):  # type: ignore[no-untyped-def]
    audit = CodeHealthAuditor().audit_path(root)
    findings = asyncio.run(ruff.check(root))
    unformatted = asyncio.run(ruff.unformatted(root))
    cands = candidates(audit, findings, unformatted, root=root, llm=bool(kw.pop("llm", False)))
    return plan_tasks(root, audit, cands, context=CascadeContext.root("improve"), **kw)  # type: ignore[arg-type]


def test_one_task_per_safe_rule_and_file_worst_file_first(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "pkg" / "clean.py").write_text(CLEAN + "\n\nx = dict()\n")  # C408 has no safe fix: no task
    plan = _plan(root)
    actions = {(t.params["action"], t.target) for t in plan.tasks}
    assert ("lint:F401", "pkg/mod.py") in actions
    assert ("modernize:UP006", "pkg/mod.py") in actions
    assert ("simplify:RET505", "pkg/mod.py") in actions
    assert not any(t.target == "pkg/clean.py" for t in plan.tasks)
    assert plan.tasks[0].target == "pkg/mod.py"  # the least maintainable file comes first
    assert all(t.files == (t.target,) for t in plan.tasks)
    assert len({t.id for t in plan.tasks}) == len(plan.tasks)
    assert all(t.context.depth == 1 for t in plan.tasks)


def test_memory_skips_known_failures_on_the_same_content(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    knowledge = InMemoryKnowledge()
    digest = content_hash((root / "pkg" / "mod.py").read_bytes())
    knowledge.record_outcome(
        ChangeOutcome("lint", "lint:F401", "ruff-fix", "pkg/mod.py", digest, "rolled_back", "test failure")
    )
    plan = _plan(root, knowledge=knowledge)
    assert not any(t.params["action"] == "lint:F401" for t in plan.tasks)
    assert [(s.action, s.target) for s in plan.skipped] == [("lint:F401", "pkg/mod.py")]
    assert "known to fail (memory)" in plan.skipped[0].reason
    # once the file changes, the veto no longer applies
    (root / "pkg" / "mod.py").write_text((root / "pkg" / "mod.py").read_text() + "\n# edited\n")
    assert any(t.params["action"] == "lint:F401" for t in _plan(root, knowledge=knowledge).tasks)


def test_max_tasks_and_low_route_weight(tmp_path: Path) -> None:
    root = make_project(tmp_path)

    class Weights(InMemoryKnowledge):
        def route_weight(self, agent: str, task_kind: str) -> float:
            return 0.1 if agent == "lint" else 1.0

    plan = _plan(root, knowledge=Weights())
    lint = [t for t in plan.tasks if t.agent == "lint"]
    assert lint and all(t.priority is AgentPriority.LOW for t in lint)
    assert plan.tasks[-1].agent == "lint"  # lowest weight goes last within the file
    limited = _plan(root, max_tasks=2)
    assert len(limited.tasks) == 2
    assert sum("over --max-tasks" in s.reason for s in limited.skipped) >= 1


def test_llm_candidates(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(12))
    (root / "pkg" / "big.py").write_text(
        f'"""Big."""\n\n\ndef big(x):\n    """Doc."""\n{branches}    return -1\n'
    )
    plan = _plan(root, llm=True)
    refactor = [t for t in plan.tasks if t.agent == "refactor"]
    assert [(t.target, t.params["function"]) for t in refactor] == [("pkg/big.py", "big")]
    docs = {t.target: t.params["names"] for t in plan.tasks if t.agent == "docstring"}
    assert "total" in docs["pkg/mod.py"] and "pkg/big.py" not in docs


def test_source_files_come_before_tests(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "tests" / "test_extra.py").write_text("import os, sys\n\n\ndef test_x():\n    assert 1 == 1\n")
    plan = _plan(root)
    targets = [t.target for t in plan.tasks]
    assert "tests/test_extra.py" in targets
    last_source = max(i for i, t in enumerate(targets) if not t.startswith("tests/"))
    first_test = min(i for i, t in enumerate(targets) if t.startswith("tests/"))
    assert last_source < first_test
