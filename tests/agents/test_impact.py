"""Test-impact selection recorded from a real covered baseline run (pytest and unittest)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pyagent.agents.testing import TestAgent, discover_tests
from tests.improve_helpers import NO_PLUGINS, run_test_agent


def _project(root: Path, *, package_tests: bool) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    for name in ("alpha", "beta", "gamma"):
        (root / "pkg" / f"{name}.py").write_text(f"def {name}(x):\n    return x + {len(name)}\n")
    if package_tests:
        (root / "tests" / "__init__.py").write_text("")
    (root / "tests" / "test_alpha.py").write_text(
        "import unittest\n\nfrom pkg.alpha import alpha\n\n\nclass T(unittest.TestCase):\n"
        "    def test_alpha(self):\n        self.assertEqual(alpha(1), 6)\n"
    )
    (root / "tests" / "test_both.py").write_text(
        "import unittest\n\nfrom pkg.alpha import alpha\nfrom pkg.beta import beta\n\n\n"
        "class T(unittest.TestCase):\n    def test_both(self):\n        self.assertEqual(alpha(beta(0)), 9)\n"
    )
    # no test function in here: nothing is attributed to it, so it runs for every change
    (root / "tests" / "test_nothing.py").write_text("VALUE = 1\n")
    (root / "pyproject.toml").write_text('[project]\nname = "imp"\nversion = "0"\n')
    return root


@pytest.mark.parametrize("style", ["pytest", "unittest"])
def test_baseline_maps_files_to_the_tests_that_run_them(tmp_path: Path, style: str) -> None:
    root = _project(tmp_path / "p", package_tests=style == "pytest")
    cmd = (
        f"{sys.executable} -m pytest"
        if style == "pytest"
        else f"{sys.executable} -m unittest discover -s tests"
    )
    command = discover_tests(root, cmd)
    assert command is not None
    command = type(command)(command.argv, command.style, dict(NO_PLUGINS))
    agent = TestAgent(command, timeout=120)
    files = [p.relative_to(root).as_posix() for p in root.rglob("*.py")]
    baseline = run_test_agent(agent, root, impact_files=files)
    impact = baseline.impact
    assert baseline.passed == 2 and baseline.failed == 0
    assert impact is not None
    assert impact.by_file["pkg/alpha.py"] == {"tests/test_alpha.py", "tests/test_both.py"}
    assert impact.by_file["pkg/beta.py"] == {"tests/test_both.py"}
    assert "pkg/gamma.py" not in impact.by_file  # no test runs it
    assert impact.uncovered == {"tests/test_nothing.py"}
    assert impact.select(["pkg/beta.py"]) == ["tests/test_both.py", "tests/test_nothing.py"]
    assert impact.select(["pkg/gamma.py"]) == ["tests/test_nothing.py"]
    assert impact.select(["tests/conftest.py"]) is None and impact.select(["setup.cfg"]) is None

    narrowed = run_test_agent(agent, root, select=["tests/test_both.py"])
    assert set(narrowed.outcomes) <= set(baseline.outcomes) and narrowed.passed == 1


def test_a_narrowed_run_reports_new_failures_among_the_selected_tests(tmp_path: Path) -> None:
    root = _project(tmp_path / "p", package_tests=True)
    command = discover_tests(root, f"{sys.executable} -m pytest")
    assert command is not None
    agent = TestAgent(type(command)(command.argv, command.style, dict(NO_PLUGINS)), timeout=120)
    baseline = run_test_agent(agent, root)
    (root / "pkg" / "beta.py").write_text("def beta(x):\n    return x\n")
    narrowed = run_test_agent(agent, root, select=["tests/test_both.py"])
    assert narrowed.selected_regressions(baseline) == ["tests.test_both.T::test_both"]
    assert "tests.test_alpha.T::test_alpha" not in narrowed.outcomes  # it was not run at all
