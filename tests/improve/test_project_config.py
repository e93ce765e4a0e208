"""Project configuration as improve reads it, checked against the real ruff binary."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from pyagent.agents import ruff
from pyagent.improve.project_config import (
    ProjectConfigError,
    choose_formatter,
    lint_rules,
    load_pyagent_config,
)
from pyagent.improve.test_command import TestCommandError, choose_test_command

COMPLEX = "import os\n\n\ndef f(a, b):\n    if a:\n        return 1\n    if b:\n        return 2\n    return 3\n"


def _codes(root: Path) -> list[str]:
    found = asyncio.run(ruff.check(root, ["."], rules=lint_rules(root)))
    return sorted(f.code for f in found)


def test_flake8_select_ignore_and_complexity_map_to_ruff(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(COMPLEX + 'x = "' + "y" * 120 + '"\n')
    (tmp_path / "tox.ini").write_text("[flake8]\nmax-complexity = 2\nmax-line-length = 200\nignore = C901, W503\n")
    rules = lint_rules(tmp_path)
    assert "tox.ini [flake8]" in rules.origin and "W503" in rules.origin  # named, not silently dropped
    assert _codes(tmp_path) == ["F401"]  # C901 ignored, the long line is within 200
    (tmp_path / "tox.ini").write_text("[flake8]\nmax-complexity = 2\n")
    assert _codes(tmp_path) == ["C901", "E501", "F401"]  # flake8's default line length is 79


def test_flake8_per_file_ignores_and_exclude(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("import os\n")
    (tmp_path / "vendor").mkdir()
    (tmp_path / "vendor" / "b.py").write_text("import sys\n")
    (tmp_path / "c.py").write_text("import json\n")
    (tmp_path / ".flake8").write_text("[flake8]\nselect = F\nper-file-ignores =\n    pkg/*.py: F401\nexclude = vendor/\n")
    found = asyncio.run(ruff.check(tmp_path, ["."], rules=lint_rules(tmp_path)))
    assert [(f.path, f.code) for f in found] == [("c.py", "F401")]
    # an explicit path that the project excludes stays excluded (the gate lints single files)
    assert asyncio.run(ruff.check(tmp_path, ["vendor/b.py"], rules=lint_rules(tmp_path))) == []


def test_no_config_is_bug_class_only(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "import sys\nimport os\nfrom typing import List\n\n\ndef f(x: List[int]):\n    if x == None:\n"
        "        return 1\n    else:\n        return getattr(x, 'a')\n\n\ndef g(a=[]):\n    return a\n"
    )
    assert _codes(tmp_path) == ["B006", "F401", "F401"]  # no I001, UP, E711, RET505, B009


def test_ruff_config_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("import os\nfrom typing import List\nx: List[int] = []\n")
    (tmp_path / "pyproject.toml").write_text('[tool.ruff.lint]\nselect = ["UP"]\n')
    assert lint_rules(tmp_path).args == ()
    assert _codes(tmp_path) == ["UP006", "UP035"]


def test_formatter_only_when_declared(tmp_path: Path) -> None:
    assert choose_formatter(tmp_path, override=None, python_file_count=3, ruff_unformatted=1).name is None
    assert choose_formatter(tmp_path, override=None, python_file_count=40, ruff_unformatted=1).name == "ruff"
    assert choose_formatter(tmp_path, override=None, python_file_count=40, ruff_unformatted=5).name is None
    (tmp_path / ".pre-commit-config.yaml").write_text("repos:\n- repo: x\n  hooks:\n  - id: black\n")
    assert choose_formatter(tmp_path, override=None, python_file_count=1, ruff_unformatted=1).name == "black"
    assert choose_formatter(tmp_path, override="none", python_file_count=1, ruff_unformatted=1).name is None
    (tmp_path / "pyproject.toml").write_text("[tool.ruff.format]\nquote-style = 'preserve'\n")
    assert choose_formatter(tmp_path, override=None, python_file_count=1, ruff_unformatted=1).name == "ruff"


def test_pyagent_table_is_validated(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.pyagent]\ntest-cmd = "make check"\nmax-complexity = 7\n')
    cfg = load_pyagent_config(tmp_path)
    assert (cfg.test_cmd, cfg.max_complexity) == ("make check", 7)
    (tmp_path / "pyproject.toml").write_text("[tool.pyagent]\nmax_complexty = 7\n")
    with pytest.raises(ProjectConfigError, match="unknown key 'max_complexty'"):
        load_pyagent_config(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.pyagent]\nformatter = "yapf"\n')
    with pytest.raises(ProjectConfigError, match="formatter must be one of"):
        load_pyagent_config(tmp_path)


def test_declared_test_commands_in_order(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "test_a.py").write_text("def test_a():\n    pass\n")
    found = choose_test_command(tmp_path)
    assert found.source.startswith("discovery") and found.command is not None
    assert found.command.argv == (sys.executable, "-m", "pytest")  # written for pytest
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "ci.yml").write_text(
        "jobs:\n  t:\n    steps:\n      - run: pip install .\n      - run: python -m pytest -x t\n"
    )
    assert choose_test_command(tmp_path).command.argv[-2:] == ("-x", "t")  # type: ignore[union-attr]
    (tmp_path / "Makefile").write_text("PY = python\ntest:\n\t@$(PY) -m pytest -q t\n")
    assert choose_test_command(tmp_path).source == "Makefile `test` target"
    (tmp_path / "noxfile.py").write_text(
        "import nox\n\n\n@nox.session\ndef tests(session):\n    session.run('pytest', '--tb=short', *session.posargs)\n"
    )
    assert choose_test_command(tmp_path).source == "noxfile.py session 'tests'"
    (tmp_path / "tox.ini").write_text("[testenv]\ncommands =\n    pip list\n    coverage run -m pytest {posargs:t}\n")
    chosen = choose_test_command(tmp_path)
    assert chosen.source == "tox.ini [testenv] commands"
    assert chosen.command is not None and chosen.command.argv == (sys.executable, "-m", "pytest", "t")
    (tmp_path / "pyproject.toml").write_text('[tool.pyagent]\ntest-cmd = "python -m unittest -v"\n')
    chosen = choose_test_command(tmp_path, None, load_pyagent_config(tmp_path).test_cmd)
    assert chosen.command is not None and chosen.command.style == "unittest"
    assert choose_test_command(tmp_path, "python -m pytest -k x").source == "--test-cmd"


def test_unittest_only_tests_are_run_by_unittest_whatever_is_installed(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "import unittest\n\n\nclass T(unittest.TestCase):\n    def test_a(self):\n        pass\n"
    )
    chosen = choose_test_command(tmp_path)
    assert chosen.command is not None and chosen.command.argv[1:3] == ("-m", "unittest")


def test_a_declared_program_that_is_missing_stops(tmp_path: Path) -> None:
    with pytest.raises(TestCommandError, match="not on PATH"):
        choose_test_command(tmp_path, "definitely-not-a-test-runner-here --all")
