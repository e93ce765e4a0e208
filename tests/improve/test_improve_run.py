"""Whole `improve` runs on a real tiny project with real tests, ruff, git and transactions."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from pyagent.improve.run import ImproveError, ImproveOptions, RunResult, improve
from pyagent.improve.undo import UndoError, undo_last_run
from pyagent.model.knowledge import InMemoryKnowledge
from pyagent.model.task import AgentTask, ChangeSet
from pyagent.pipeline.executor import Executor, ExecutorSetup
from tests.improve_helpers import NO_PLUGINS, UNITTEST_CMD, make_project

MOD = "pkg/mod.py"


def _run(path: Path, **kw: object) -> RunResult:
    kw.setdefault("test_cmd", UNITTEST_CMD)
    kw.setdefault("test_env", NO_PLUGINS)
    return asyncio.run(improve(ImproveOptions(path=path, **kw)))  # type: ignore[arg-type]


def _by_action(result: RunResult) -> dict[str, str]:
    return {t.action: t.status for t in result.tasks if t.target == MOD}


def test_in_place_run_keeps_good_changes_rolls_back_the_trap_and_undo_restores(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    knowledge = InMemoryKnowledge()
    result = _run(root, use_git=False, knowledge=knowledge, concurrency=2, test_cmd=None)  # pytest, found
    statuses = _by_action(result)
    assert statuses["lint:F401"] == "rolled_back"
    trap = next(t for t in result.tasks if t.action == "lint:F401")
    assert "test failure" in trap.reason and "test_plugin_registered" in trap.reason
    assert statuses["modernize:UP006"] == "kept" and statuses["simplify:RET505"] == "kept"
    assert result.regressions() == []
    assert result.tests_after is not None and result.tests_after.failed == 0
    now = (root / MOD).read_text()
    assert "list[int]" in now and "import pkg.plugins" in now
    assert result.metrics_after["ruff_findings"] < result.metrics_before["ruff_findings"]

    rep = json.loads((result.report_dir / "report.json").read_text())  # type: ignore[operator]
    assert {"tasks", "tests", "metrics"} <= set(rep)
    for t in rep["tasks"]:
        assert {"id", "agent", "target", "status", "reason"} <= set(t)
        assert t["status"] in ("kept", "rolled_back", "failed", "skipped")
    assert rep["tests"]["before"]["passed"] == 3 and rep["tests"]["after"]["failed"] == 0
    # the test agent that ran the baseline, the gate's tests and the final suite is one of the run's agents
    assert {"name": "tests", "version": "0.1.0", "capabilities": ["tests"]} in rep["agents"]
    assert "mi_avg" in rep["metrics"]["before"] and "mi_avg" in rep["metrics"]["after"]
    assert (result.report_dir / "report.html").read_text().count("<details data-status=") == len(rep["tasks"])  # type: ignore[operator]
    events = (result.report_dir / "events.jsonl").read_text().splitlines()  # type: ignore[operator]
    assert any(json.loads(e).get("outcome") == "rolled_back" for e in events)


def test_memory_skips_a_change_that_failed_on_the_same_content(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    (root / MOD).write_text(
        "import pkg.plugins\n\n\ndef total(items):\n    return sum(items)\n\n\ndef name(x):\n    return str(x)\n"
    )
    (root / "tests" / "test_pkg.py").write_text(
        "from pkg.mod import total\nfrom pkg.registry import REGISTRY\n\n\ndef test_total():\n    assert total([1]) == 1\n\n\n"
        "def test_plugin_registered():\n    assert REGISTRY['double'](4) == 8\n"
    )
    knowledge = InMemoryKnowledge()
    first = _run(root, use_git=False, knowledge=knowledge, test_cmd=None)
    assert [(t.action, t.status) for t in first.tasks if t.target == MOD] == [("lint:F401", "rolled_back")]
    second = _run(root, use_git=False, knowledge=knowledge, test_cmd=None)
    assert not any(t.target == MOD for t in second.tasks)
    assert [(s["action"], s["target"]) for s in second.skipped_by_memory] == [("lint:F401", MOD)]
    assert "known to fail (memory)" in second.skipped_by_memory[0]["reason"]
    rep = json.loads((second.report_dir / "report.json").read_text())  # type: ignore[operator]
    assert rep["skipped_by_memory"][0]["action"] == "lint:F401"
    assert rep["not_attempted"] == 0


def test_undo_restores_and_refuses_after_later_edits(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    original = (root / MOD).read_text()
    result = _run(root, use_git=False, max_tasks=3)
    assert result.counts()["kept"] >= 1
    assert result.not_attempted > 0 and result.skipped_by_memory == []
    changed = (root / MOD).read_text()
    assert changed != original
    (root / MOD).write_text(changed + "# my own edit\n")
    with pytest.raises(UndoError, match="changed after run"):
        undo_last_run(root)
    assert (root / MOD).read_text().endswith("# my own edit\n")  # nothing lost
    (root / MOD).write_text(changed)
    undone = undo_last_run(root)
    assert MOD in undone.restored
    assert (root / MOD).read_text() == original
    with pytest.raises(UndoError, match="no run to undo"):
        undo_last_run(root)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def test_git_run_commits_each_change_on_a_branch_and_leaves_the_user_tree(tmp_path: Path) -> None:
    root = make_project(tmp_path / "repo")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = _git(root, "rev-parse", "HEAD").strip()
    original = (root / MOD).read_text()
    result = _run(root, max_tasks=4)
    kept = [t for t in result.tasks if t.status == "kept"]
    assert kept and result.branch == f"pyagent/{result.run_id}"
    log = _git(root, "log", "--format=%H %s", f"{head}..{result.branch}").splitlines()
    assert len(log) == len(kept)
    assert {line.split(" ", 1)[0] for line in log} == {t.commit for t in kept}
    body = _git(root, "log", "-1", "--format=%B", result.branch)
    assert "Why:" in body and "Metrics:" in body
    # the user's branch, index and working tree are as they were
    assert _git(root, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert _git(root, "rev-parse", "HEAD").strip() == head
    assert _git(root, "status", "--porcelain") == ""
    assert (root / MOD).read_text() == original
    assert len(_git(root, "worktree", "list").splitlines()) == 1


def test_dry_run_changes_nothing_and_shows_diffs(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    before = {p: p.read_bytes() for p in root.rglob("*.py")}
    result = _run(root, dry_run=True, use_git=False, max_tasks=2)
    assert result.mode == "dry-run"
    assert {p: p.read_bytes() for p in root.rglob("*.py")} == before
    assert any(t.status == "kept" and t.diff.startswith("--- a/") for t in result.tasks)
    assert not (root / ".pyagent" / "runs").exists()


class _EditsBehindItsBack:
    """Wraps the local executor (through the --swarm hook) and edits the tree once mid-task."""

    def __init__(self, setup: ExecutorSetup) -> None:
        self.setup = setup
        self.calls = 0

    async def aclose(self) -> str | None:
        return None

    async def execute(self, task: AgentTask, files: dict[str, bytes]) -> ChangeSet:
        self.calls += 1
        cs = await self.setup.local.execute(task, files)
        if self.calls == 1:
            path = self.setup.root / task.target
            path.write_text(path.read_text() + "\n\nEXTRA = 1\n")
        return cs


def test_stale_change_is_recomputed_on_the_new_base(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    (root / MOD).write_text(
        "from typing import List\n\n\ndef total(items: List[int]) -> int:\n    return sum(items)\n"
    )
    (root / "tests" / "test_pkg.py").write_text(
        "import unittest\n\nfrom pkg.mod import total\n\n\nclass T(unittest.TestCase):\n"
        "    def test_total(self):\n        self.assertEqual(total([1, 2]), 3)\n"
    )
    made: list[_EditsBehindItsBack] = []

    def factory(setup: ExecutorSetup) -> Executor:
        made.append(_EditsBehindItsBack(setup))
        return made[0]

    result = _run(root, use_git=False, executor_factory=factory, concurrency=1, allow_few_tests=True)
    assert [(t.action, t.status) for t in result.tasks] == [("modernize:UP006", "kept")], result.tasks[
        0
    ].reason
    assert made[0].calls == 2  # computed, found stale at merge time, computed again on the new base
    text = (root / MOD).read_text()
    assert "list[int]" in text and "EXTRA = 1" in text  # the concurrent edit survived the merge


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"path": "/nonexistent/project"}, "is not a directory"),
        ({"concurrency": 0}, "--concurrency"),
        ({"test_cmd": "   "}, "--test-cmd"),
        ({"llm": "local:"}, "model directory"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    root = make_project(tmp_path / "p")
    opts = {"path": root, "use_git": False, **kw}
    with pytest.raises(ImproveError, match=message):
        asyncio.run(improve(ImproveOptions(**opts)))  # type: ignore[arg-type]
    assert not (root / ".pyagent" / "runs").exists()


class _BreaksOnce:
    """Through the --swarm hook: the second task's executor raises something unexpected."""

    def __init__(self, setup: ExecutorSetup) -> None:
        self.setup = setup
        self.calls = 0

    async def aclose(self) -> str | None:
        return None

    async def execute(self, task: AgentTask, files: dict[str, bytes]) -> ChangeSet:
        self.calls += 1
        if self.calls == 2:
            raise LookupError("peer vanished")
        return await self.setup.local.execute(task, files)


def test_an_unexpected_error_fails_one_task_and_the_run_goes_on(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    result = _run(root, use_git=False, max_tasks=3, concurrency=1, executor_factory=_BreaksOnce)
    failed = [t for t in result.tasks if t.status == "failed"]
    assert len(failed) == 1 and failed[0].reason == "unexpected LookupError: peer vanished"
    assert len(result.tasks) == 3 and all(t.status != "skipped" or t.reason for t in result.tasks)
    assert result.tests_after is not None and result.regressions() == []


def test_git_run_gives_the_tests_the_gitignored_files_they_import(tmp_path: Path) -> None:
    """A generated, gitignored module (isodate's version.py) is not in git's checkout; the copies the
    tests run in must still hold it, and it is never committed."""
    extra = ("\n\nclass TestGenerated(unittest.TestCase):\n    def test_generated_version(self):\n"
             "        from pkg._version import VERSION\n        self.assertEqual(VERSION, '1.2')\n")
    root = make_project(tmp_path / "repo", extra_test=extra)
    (root / ".gitignore").write_text("pkg/_version.py\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (root / "pkg" / "_version.py").write_text('VERSION = "1.2"\n')
    result = _run(root, max_tasks=2)
    assert result.tests_before is not None
    assert result.tests_before.outcomes.get("test_pkg.TestGenerated.test_generated_version") == "passed", (
        result.tests_before.outcomes)
    assert [t for t in result.tasks if t.status == "kept"], [(t.action, t.status, t.reason) for t in result.tasks]
    assert "pkg/_version.py" not in _git(root, "ls-tree", "-r", "--name-only", result.branch).split()
