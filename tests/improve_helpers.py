"""A tiny real project (package + pytest tests) that the improve pipeline's tests work on."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import textwrap
from pathlib import Path
from typing import Any

from pyagent.agents.test_results import TestResults
from pyagent.agents.testing import TestAgent, TestCommand, discover_tests
from pyagent.model.context import CascadeContext
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask

MOD = """\
import os
import sys
from typing import List

import pkg.plugins


def total(items: List[int]) -> int:
    t = 0
    for i in items:
        t = t + i
    return t


def name(x):
    if x == None:
        return "none"
    else:
        return "{}".format(x)
"""

PLUGINS = """\
from pkg.registry import REGISTRY

REGISTRY["double"] = lambda x: 2 * x
"""

TESTS = """\
import unittest

from pkg.mod import name, total
from pkg.registry import REGISTRY


class TestPkg(unittest.TestCase):
    def test_total(self):
        self.assertEqual(total([1, 2, 3]), 6)

    def test_name(self):
        self.assertEqual(name(None), "none")
        self.assertEqual(name(3), "3")

    def test_plugin_registered(self):
        self.assertEqual(REGISTRY["double"](4), 8)
"""

# Runs the project's tests with the standard library's runner: per-test outcomes, fast start.
UNITTEST_CMD = f"{sys.executable} -m unittest discover -s tests"


def make_project(root: Path, *, extra_test: str = "") -> Path:
    """Write the project under ``root``: ``pkg/mod.py`` imports ``pkg.plugins`` for its side effect."""
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "registry.py").write_text("REGISTRY = {}\n")
    (root / "pkg" / "plugins.py").write_text(PLUGINS)
    (root / "pkg" / "mod.py").write_text(MOD)
    (root / "tests" / "test_pkg.py").write_text(TESTS + textwrap.dedent(extra_test))
    (root / "pyproject.toml").write_text(
        '[project]\nname = "tiny"\nversion = "0"\n\n[tool.pytest.ini_options]\npythonpath = ["."]\n'
        # the project's own lint rules: improve fixes within these
        '\n[tool.ruff.lint]\nselect = ["E", "F", "W", "B", "UP", "SIM", "C4", "PIE", "RET"]\n'
        'ignore = ["E501"]\n'
    )
    return root


# The tiny project needs no pytest plugins; not loading the installed ones saves ~1s per run.
NO_PLUGINS = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def pytest_command(root: Path) -> TestCommand:
    """The discovered (pytest) command for ``root``, without plugin autoload."""
    cmd = discover_tests(root)
    assert cmd is not None and cmd.style == "pytest"
    return dataclasses.replace(cmd, extra_env=NO_PLUGINS)


def run_test_agent(agent: TestAgent, cwd: Path, **params: Any) -> TestResults:
    """One run of the test agent through its ``run(task, workspace)`` contract, in a chain of its own."""
    outcome = asyncio.run(agent.run(agent.task(CascadeContext.root("test"), **params), cwd))
    assert outcome.tests is not None and outcome.error is None
    return outcome.tests


def change_task(path: str) -> AgentTask:
    """A task changing ``path``, for judging a change through the gate directly."""
    return AgentTask("t1", "ruff", "ruff-fix", path, (path,), AgentPriority.STANDARD, CascadeContext.root("test"))
