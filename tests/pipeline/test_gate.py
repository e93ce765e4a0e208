"""The verification gate judges real changes in a real project with its real tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyagent.agents.testing import TestRunner
from pyagent.pipeline.gate import VerificationGate
from tests.improve_helpers import make_project, pytest_command


def _gate(root: Path) -> VerificationGate:
    runner = TestRunner(pytest_command(root))
    baseline = asyncio.run(runner.run(root))
    assert baseline.failed == 0 and baseline.passed == 3
    return VerificationGate(tests=runner, baseline=baseline)


def _judge(root: Path, gate: VerificationGate, new_source: str) -> tuple[bool, str, str]:
    path = "pkg/mod.py"
    before = asyncio.run(gate.measure(root, [path]))
    (root / path).write_text(new_source)
    verdict = asyncio.run(gate.verify(root, before, [path]))
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
    assert "ruff findings in pkg/mod.py rose" in reason


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


def test_test_regression_is_rejected(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    src = (root / "pkg" / "mod.py").read_text().replace("import pkg.plugins\n", "")
    passed, check, reason = _judge(root, _gate(root), src)
    assert (passed, check) == (False, "tests")
    assert "test_plugin_registered" in reason
