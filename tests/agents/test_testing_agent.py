"""The test agent: finding a project's tests, running them for real, per-test outcomes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from pyagent.agents.base import BaseAgent
from pyagent.agents.test_results import TestResults
from pyagent.agents.testing import TestAgent, discover_tests, parse_junit, parse_unittest
from pyagent.model.context import CascadeContext
from tests.improve_helpers import UNITTEST_CMD, make_project, run_test_agent


def test_discovers_pytest_from_config(tmp_path: Path) -> None:
    make_project(tmp_path)
    cmd = discover_tests(tmp_path)
    assert cmd is not None and cmd.style == "pytest"


def test_no_tests_means_no_command(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    assert discover_tests(tmp_path) is None


def test_explicit_command_wins_and_pytest_is_recognised(tmp_path: Path) -> None:
    assert discover_tests(tmp_path, "make check").style == "exit-code"  # type: ignore[union-attr]
    assert discover_tests(tmp_path, f"{sys.executable} -m pytest -x").style == "pytest"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="empty test command"):
        discover_tests(tmp_path, "   ")


def test_runs_real_pytest_and_reports_each_test(tmp_path: Path) -> None:
    make_project(tmp_path, extra_test="\n\ndef test_broken():\n    assert 1 == 2\n")
    agent = TestAgent(discover_tests(tmp_path))  # type: ignore[arg-type]
    task = agent.task(CascadeContext.root("improve"))
    outcome = asyncio.run(agent.run(task, tmp_path))
    res = outcome.tests
    assert res is not None and outcome.error is None
    assert outcome.note == "3 passed, 1 failed of 4 test(s)"
    assert isinstance(agent, BaseAgent) and (task.agent, task.kind, task.files) == ("tests", "tests", ())
    assert res.outcomes["tests.test_pkg.TestPkg::test_total"] == "passed"
    assert res.outcomes["tests.test_pkg::test_broken"] == "failed"
    assert (res.passed, res.failed) == (3, 1)
    assert not any(p.name == ".pytest_cache" for p in tmp_path.iterdir())


def test_regressions_include_vanished_tests() -> None:
    before = TestResults({"a": "passed", "b": "passed", "c": "failed"}, (), 0, 0.1)
    after = TestResults({"a": "passed", "c": "passed"}, (), 1, 0.1)
    assert after.regressions(before) == ["b"]
    assert TestResults.from_dict(after.to_dict()).outcomes == after.outcomes


def test_unittest_command_reports_each_test(tmp_path: Path) -> None:
    make_project(tmp_path)
    cmd = discover_tests(tmp_path, UNITTEST_CMD)
    assert cmd is not None and cmd.style == "unittest" and cmd.argv[-1] == "-v"
    res = run_test_agent(TestAgent(cmd), tmp_path)
    assert res.outcomes == {
        "test_pkg.TestPkg.test_total": "passed",
        "test_pkg.TestPkg.test_name": "passed",
        "test_pkg.TestPkg.test_plugin_registered": "passed",
    }


def test_exit_code_command_counts_as_one_test(tmp_path: Path) -> None:
    ok = TestAgent(discover_tests(tmp_path, f"{sys.executable} -c pass"))  # type: ignore[arg-type]
    bad = TestAgent(discover_tests(tmp_path, f"{sys.executable} -c 'raise SystemExit(3)'"))  # type: ignore[arg-type]
    assert run_test_agent(ok, tmp_path).passed == 1
    res = run_test_agent(bad, tmp_path)
    assert (res.passed, res.failed, res.exit_code) == (0, 1, 3)


def test_timeout_is_reported(tmp_path: Path) -> None:
    cmd = discover_tests(tmp_path, f"{sys.executable} -c 'import time; time.sleep(30)'")
    res = run_test_agent(TestAgent(cmd, timeout=0.5), tmp_path)  # type: ignore[arg-type]
    assert res.timed_out and res.failed == 1 and "timed out" in res.note


def test_api_keys_do_not_reach_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    (tmp_path / "test_env.py").write_text(
        "import os\n\ndef test_env():\n    assert 'OPENAI_API_KEY' not in os.environ\n"
    )
    res = run_test_agent(TestAgent(discover_tests(tmp_path)), tmp_path)  # type: ignore[arg-type]
    assert res.outcomes == {"test_env::test_env": "passed"}


def test_parse_junit_collection_error_counts_as_error() -> None:
    xml = (
        '<testsuites><testsuite><testcase classname="" name="tests.test_x"><error message="boom"/></testcase>'
        '<testcase classname="tests.test_y" name="test_a"><skipped/></testcase></testsuite></testsuites>'
    )
    assert parse_junit(xml) == {"tests.test_x": "error", "tests.test_y::test_a": "skipped"}


def test_parse_real_unittest_output(tmp_path: Path) -> None:
    (tmp_path / "test_u.py").write_text(
        "import unittest\n\nclass T(unittest.TestCase):\n"
        "    def test_ok(self):\n        pass\n\n    def test_bad(self):\n        self.fail('x')\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "unittest", "discover", "-v"], cwd=tmp_path, capture_output=True, text=True
    )
    outcomes = parse_unittest(out.stderr)
    assert outcomes == {"test_u.T.test_ok": "passed", "test_u.T.test_bad": "failed"}


def test_renamed_parametrized_cases_are_not_regressions_but_lost_ones_are() -> None:
    before = TestResults(
        {
            "t::test_p[obj0x1]": "passed",
            "t::test_p[obj0x2]": "passed",
            "t::test_q[a]": "passed",
            "t::test_r[x]": "passed",
        },
        (),
        0,
        0.1,
    )
    # test_p's two cases come back under new ids (both pass); test_q has one case fewer; test_r fails
    after = TestResults(
        {"t::test_p[obj0x7]": "passed", "t::test_p[obj0x8]": "passed", "t::test_r[x]": "failed"},
        (),
        1,
        0.1,
    )
    assert after.regressions(before) == ["t::test_q[a]", "t::test_r[x]"]
    # a renamed case that now fails is not a pass: the vanished id is still lost
    worse = TestResults({"t::test_p[obj0x7]": "failed", "t::test_p[obj0x8]": "passed"}, (), 1, 0.1)
    assert worse.regressions(before) == ["t::test_p[obj0x2]", "t::test_q[a]", "t::test_r[x]"]
