"""The verification gate judges real changes in a real project with its real tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyagent.agents.testing import TestAgent
from pyagent.pipeline.gate import VerificationGate
from tests.improve_helpers import change_task, make_project, pytest_command, run_test_agent


def _gate(root: Path) -> VerificationGate:
    agent = TestAgent(pytest_command(root))
    baseline = run_test_agent(agent, root)
    assert baseline.failed == 0 and baseline.passed == 3
    return VerificationGate(tests=agent, baseline=baseline)


def _judge(
    root: Path, gate: VerificationGate, new_source: str, *, judge_health: bool = True
) -> tuple[bool, str, str]:
    path = "pkg/mod.py"
    before = asyncio.run(gate.measure(root, [path]))
    (root / path).write_text(new_source)
    verdict = asyncio.run(gate.verify(change_task(path), root, before, [path], judge_health=judge_health))
    return verdict.passed, verdict.check, verdict.reason


def test_good_change_passes(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    gate = _gate(root)
    src = (root / "pkg" / "mod.py").read_text().replace("import os\nimport sys\n", "")
    passed, check, reason = _judge(root, gate, src)
    assert passed, reason
    assert check == ""


def test_syntax_error_is_rejected(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    passed, check, reason = _judge(root, _gate(root), "def broken(:\n")
    assert (passed, check) == (False, "parse")
    assert "does not parse" in reason


def test_more_ruff_findings_are_rejected(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    src = (root / "pkg" / "mod.py").read_text() + "\nimport json\n"
    passed, check, reason = _judge(root, _gate(root), src)
    assert (passed, check) == (False, "ruff")
    assert "new finding in pkg/mod.py:" in reason and "import json" in reason


def test_a_new_finding_is_rejected_even_when_the_count_stays(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    # `import os` (F401) goes, `import json` (F401) comes: as many findings before as after
    src = (root / "pkg" / "mod.py").read_text().replace("import os\n", "import json\n")
    gate = _gate(root)
    before = asyncio.run(gate.measure(root, ["pkg/mod.py"]))
    passed, check, reason = _judge(root, gate, src)
    after = asyncio.run(gate.measure(root, ["pkg/mod.py"]))
    assert before["pkg/mod.py"].ruff == after["pkg/mod.py"].ruff
    assert (passed, check) == (False, "ruff")
    assert "F401 `json` imported but unused" in reason


def test_a_finding_that_only_moved_is_not_new(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    src = "\n\n" + (root / "pkg" / "mod.py").read_text()  # every finding two lines lower
    passed, _check, reason = _judge(root, _gate(root), src)
    assert passed, reason


def test_higher_complexity_is_rejected(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    src = (
        (root / "pkg" / "mod.py")
        .read_text()
        .replace("    for i in items:\n", "    for i in items:\n        if i < 0:\n            continue\n")
    )
    passed, check, reason = _judge(root, _gate(root), src)
    assert (passed, check) == (False, "complexity")
    assert "total rose 2 -> 3" in reason


def test_lower_maintainability_is_rejected(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    src = (root / "pkg" / "mod.py").read_text().replace("    t = 0\n", "    t = 0\n    t = t + 0 * 1 - 0\n")
    passed, check, reason = _judge(root, _gate(root), src)
    assert (passed, check) == (False, "mi")
    assert "maintainability index of pkg/mod.py fell" in reason


def test_a_lint_fix_is_judged_by_findings_and_tests_not_by_mi(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    src = (root / "pkg" / "mod.py").read_text().replace("    t = 0\n", "    t = 0\n    t = t + 0 * 1 - 0\n")
    passed, check, reason = _judge(root, _gate(root), src, judge_health=False)
    assert passed and check == "", reason
    assert "health" not in reason


def test_test_regression_is_rejected(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    src = (root / "pkg" / "mod.py").read_text().replace("\nimport pkg.plugins\n", "")
    passed, check, reason = _judge(root, _gate(root), src)
    assert (passed, check) == (False, "tests")
    assert "test_plugin_registered" in reason
