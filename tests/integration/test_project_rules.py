"""`improve` on small real projects works inside each project's own rules.

Each project is a real git repository with real tests. After the run the checks are independent of
PyAgent: the project's own ``ruff check``, its declared test command, git and the AST.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pyagent.improve.run import ImproveError, ImproveOptions, RunResult, improve
from tests.integration import project_kit as kit

pytestmark = pytest.mark.slow

NO_PLUGINS = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def _improve(path: Path, **kw: object) -> RunResult:
    kw.setdefault("test_env", NO_PLUGINS)
    kw.setdefault("concurrency", 1)
    kw.setdefault("knowledge", None)
    return asyncio.run(improve(ImproveOptions(path=path, **kw)))  # type: ignore[arg-type]


def _common_checks(root: Path, result: RunResult, tmp: Path, *, formatter: bool, lint_args: tuple[str, ...] = ()) -> None:
    """The four properties every project must show after improve."""
    assert result.branch, result.notes
    base = kit.checkout(root, "main", tmp / "base")
    after = kit.checkout(root, result.branch, tmp / "after")
    before_f = kit.ruff_findings(base, *lint_args)
    after_f = kit.ruff_findings(after, *lint_args)
    new = after_f - before_f
    # a finding whose line was rewritten by another fix counts as new here too: there must be none
    assert not new, new
    commits = kit.branch_commits(root, result.branch)
    assert len(commits) == sum(1 for t in result.tasks if t.status == "kept")
    if not formatter:
        assert not [c for c in commits if kit.formatting_only(root, c)]
        assert not any(t.agent == "format" for t in result.tasks)
    for n, commit in enumerate(commits):  # no kept change introduces a finding
        parent = kit.checkout(root, f"{commit}^", tmp / f"c{n}a")
        child = kit.checkout(root, commit, tmp / f"c{n}b")
        introduced = kit.ruff_findings(child, *lint_args) - kit.ruff_findings(parent, *lint_args)
        assert not introduced, (commit, introduced)
    assert result.regressions() == []


def test_narrow_ruff_select_and_makefile_runner(tmp_path: Path) -> None:
    root = kit.narrow_ruff_project(tmp_path / "p")
    result = _improve(root)
    assert "ruff configuration (pyproject.toml [tool.ruff])" in result.settings["lint"]
    assert "Makefile `test` target" in result.settings["tests"] and "unittest" in result.settings["tests"]
    kept = {t.action for t in result.tasks if t.status == "kept"}
    assert kept == {"lint:F401"}
    # rules the project did not select were never attempted
    for t in result.tasks:
        code = t.action.split(":")[-1]
        assert code[:2] in ("E4", "E7", "E9") or code.startswith("F"), t.action
    text = kit.git(root, "show", f"{result.branch}:pkg/core.py")
    assert "List[int]" in text and "else:" in text  # UP006 and RET505 are not the project's rules
    assert '"a":   1,' in text  # the hand-laid table survives: no formatter is declared
    assert result.tests_before is not None
    assert len(result.tests_before.outcomes) == kit.declared_count(
        root, ["python", "-m", "unittest", "discover", "-s", "tests", "-v"]
    ) == 2
    _common_checks(root, result, tmp_path, formatter=False)


def test_flake8_config_tox_runner_and_doctests_via_load_tests(tmp_path: Path) -> None:
    root = kit.flake8_project(tmp_path / "p")
    result = _improve(root)
    assert "flake8 configuration in setup.cfg" in result.settings["lint"]
    assert "tox.ini [testenv] commands" in result.settings["tests"]
    assert result.tests_before is not None
    # 2 test methods + 2 doctests (load_tests), exactly what the tox command itself runs
    assert len(result.tests_before.outcomes) == kit.declared_count(
        root, ["python", "-m", "unittest", "discover", "-s", "tests", "-t", "."]
    ) == 4
    assert {t.action for t in result.tasks} == {"lint:F401"}  # flake8 selects F only
    text = kit.git(root, "show", f"{result.branch}:pkg/core.py")
    assert "import os" not in text and "List[int]" in text and "x == None" in text
    _common_checks(
        root, result, tmp_path, formatter=False,
        lint_args=("--isolated", "--select=F", "--line-length=100"),
    )


def test_black_config_nox_runner_formats_with_black(tmp_path: Path) -> None:
    pytest.importorskip("black")  # the test extra installs black; without it the product says so (below)
    root = kit.black_project(tmp_path / "p")
    result = _improve(root)
    assert result.settings["formatter"].startswith("black: pyproject.toml declares [tool.black]")
    assert "noxfile.py session 'tests'" in result.settings["tests"]
    assert "default bug-class rules" in result.settings["lint"]
    fmt = [t for t in result.tasks if t.agent == "format"]
    assert fmt and all(t.status == "kept" for t in fmt)
    after = kit.checkout(root, result.branch or "", tmp_path / "black-check")
    import subprocess
    import sys

    check = subprocess.run([sys.executable, "-m", "black", "--check", "."], cwd=after, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert result.tests_before is not None
    assert len(result.tests_before.outcomes) == kit.declared_count(root, [sys.executable, "-m", "pytest", "-q"]) == 3
    _common_checks(
        root, result, tmp_path, formatter=True,
        lint_args=("--isolated", "--select=F,E9,B", "--ignore=B009,B010"),
    )


def test_no_config_gets_bug_class_rules_and_no_formatting(tmp_path: Path) -> None:
    root = kit.bare_project(tmp_path / "p")
    result = _improve(root)
    assert "default bug-class rules" in result.settings["lint"]
    assert result.settings["formatter"].startswith("none")
    assert "discovery: unittest" in result.settings["tests"]
    codes = {t.action.split(":")[-1] for t in result.tasks}
    assert codes == {"F401"}  # no I001, UP, RET, SIM, E711
    text = kit.git(root, "show", f"{result.branch}:pkg/core.py")
    assert '"a":   1,' in text and "List[int]" in text and "else:" in text
    assert result.tests_before is not None
    assert len(result.tests_before.outcomes) == kit.declared_count(root, ["python", "-m", "unittest", "-v"]) == 2
    rep = json.loads((result.report_dir / "report.json").read_text())  # type: ignore[operator]
    assert any("sets keyed by rule" in g for g in rep["gate"])
    pr = (result.report_dir / "PR.md").read_text()  # type: ignore[operator]
    assert "Lint fixes" in pr and "Command: `" in pr and "baseline: 2 passed" in pr
    _common_checks(
        root, result, tmp_path, formatter=False,
        lint_args=("--isolated", "--select=F,E9,B", "--ignore=B009,B010"),
    )


def test_a_fix_that_brings_another_finding_fixes_it_in_the_same_change(tmp_path: Path) -> None:
    """UP035 rewrites ``from typing import Callable`` in place, which un-sorts the import block (I001):
    the count of findings would stay 1 -> 1. The fixer fixes exactly the finding its own fix caused
    (the gate would reject the change otherwise, see tests/fleet/test_gate.py), so the kept commit
    leaves the project's own ``ruff check`` clean."""
    root = kit.write_project(
        tmp_path / "p",
        {
            "pyproject.toml": '[tool.ruff.lint]\nselect = ["UP035", "I001"]\n',
            "pkg/__init__.py": "",
            "pkg/core.py": """
                from os import sep
                from typing import Callable


                def apply(f: Callable[[int], int]) -> str:
                    return sep + str(f(1))
            """,
            "tests/__init__.py": "",
            "tests/test_core.py": """
                import unittest

                from pkg.core import apply


                class T(unittest.TestCase):
                    def test_apply(self):
                        self.assertEqual(apply(lambda x: x + 1)[-1], "2")

                    def test_apply_again(self):
                        self.assertTrue(apply(abs))
            """,
        },
    )
    before = kit.ruff_findings(root)
    assert [k[1] for k in before] == ["UP035"]
    result = _improve(root)
    (up,) = [t for t in result.tasks if t.action.endswith("UP035")]
    assert up.status == "kept", up.reason
    assert "1 finding(s) the fix itself caused" in up.note
    after = kit.checkout(root, result.branch or "", tmp_path / "after")
    assert kit.ruff_findings(after) == {}
    text = (after / "pkg" / "core.py").read_text()
    assert text.startswith("from collections.abc import Callable\nfrom os import sep\n")


def test_a_baseline_of_one_test_is_refused_unless_allowed(tmp_path: Path) -> None:
    root = kit.write_project(
        tmp_path / "p",
        {
            "pkg/__init__.py": "",
            "pkg/mod.py": "import os\n",
            "tests/__init__.py": "",
            "tests/test_one.py": "import unittest\n\n\nclass T(unittest.TestCase):\n    def test_one(self):\n        pass\n",
        },
    )
    with pytest.raises(ImproveError, match=r"ran 1 test\(s\).*--allow-few-tests"):
        _improve(root)
    assert kit.git(root, "branch", "--list", "pyagent/*").strip() == ""
    result = _improve(root, allow_few_tests=True)
    assert [t.action for t in result.tasks] == ["lint:F401"]


def test_a_baseline_where_no_test_passes_is_refused(tmp_path: Path) -> None:
    root = kit.write_project(
        tmp_path / "p",
        {
            "pkg/__init__.py": "",
            "pkg/mod.py": "import os\n",
            "tests/test_two.py": "import missing_module\n\n\ndef test_a():\n    pass\n",
            "tests/test_three.py": "import missing_module\n\n\ndef test_b():\n    pass\n",
        },
    )
    with pytest.raises(ImproveError, match=r"none of the 2 tests .* passed before any change"):
        _improve(root)


def test_pyagent_table_sets_test_command_exclusions_and_agents(tmp_path: Path) -> None:
    root = kit.write_project(
        tmp_path / "p",
        {
            "pyproject.toml": """
                [tool.ruff.lint]
                select = ["F", "UP"]

                [tool.pyagent]
                test-cmd = "python -m unittest discover -s tests"
                exclude = ["pkg/vendored"]
                agents = ["lint"]
            """,
            "pkg/__init__.py": "",
            "pkg/core.py": "import os\nfrom typing import List\n\n\ndef f(x: List[int]) -> int:\n    return len(x)\n",
            "pkg/vendored/__init__.py": "import sys\n",
            "tests/test_core.py": kit.UNITTEST_TESTS.replace("area, describe", "f").replace(
                "self.assertEqual(area(2, 3), 6)", "self.assertEqual(f([1]), 1)"
            ).replace(
                'self.assertEqual(describe(None), "nothing")\n            self.assertEqual(describe(3), "3")',
                "self.assertEqual(f([]), 0)",
            ),
        },
    )
    result = _improve(root)
    assert "[tool.pyagent] test-cmd" in result.settings["tests"]
    assert [(t.action, t.target) for t in result.tasks] == [("lint:F401", "pkg/core.py")]
    # the command line wins over the table
    over = _improve(root, agents=("modernize",), dry_run=True)
    assert {t.agent for t in over.tasks} == {"modernize"}


def test_declared_runner_not_installed_stops_with_what_to_install(tmp_path: Path) -> None:
    root = kit.write_project(
        tmp_path / "p",
        {
            "tox.ini": "[testenv]\ncommands = python -m nose2 -v\n",
            "pkg/__init__.py": "import os\n",
        },
    )
    with pytest.raises(ImproveError, match=r"needs nose2, which is not installed.*pip install nose2"):
        _improve(root)


def test_commits_are_grouped_by_theme_and_pr_md_lists_them(tmp_path: Path) -> None:
    root = kit.write_project(
        tmp_path / "p",
        {
            "pyproject.toml": '[tool.ruff.lint]\nselect = ["F", "UP"]\n',
            "pkg/__init__.py": "",
            # a.py is the worse file (planned first, at high priority): lint, then modernize, then
            # b.py's lint fix run in that order, and the branch is regrouped lint, lint, modernize
            "pkg/a.py": (
                "import os\nfrom typing import List\n\n\ndef a(x: List[int] = None) -> str:\n"
                "    for i in x or []:\n        if i > 1:\n            if i > 2:\n                return 'big'\n"
                "            return 'mid'\n        elif i < 0:\n            return 'neg'\n    return 'a'\n"
            ),
            "pkg/b.py": "import sys\n\n\ndef b(x: list) -> int:\n    return len(x)\n",
            "tests/__init__.py": "",
            "tests/test_ab.py": (
                "import unittest\n\nfrom pkg.a import a\nfrom pkg.b import b\n\n\nclass T(unittest.TestCase):\n"
                "    def test_a(self):\n        self.assertEqual(a([3]), 'big')\n\n"
                "    def test_b(self):\n        self.assertEqual(b([1]), 1)\n"
            ),
        },
    )
    result = _improve(root)
    kept = [t for t in result.tasks if t.status == "kept"]
    assert sorted((t.target, t.action) for t in kept) == [
        ("pkg/a.py", "lint:F401"), ("pkg/a.py", "modernize:UP006"), ("pkg/b.py", "lint:F401")
    ]
    subjects = kit.git(root, "log", "--reverse", "--format=%s", f"main..{result.branch}").splitlines()
    themes = [s.split()[1].split(":")[0] for s in subjects]
    assert themes == ["lint", "lint", "modernize"], subjects
    assert "commits were grouped by theme (lint, modernisation, simplification, formatting, ...)" in result.notes
    # every record points at its commit on the branch as it is now
    on_branch = set(kit.branch_commits(root, result.branch or ""))
    assert {t.commit for t in kept} == on_branch
    pr = (result.report_dir / "PR.md").read_text()  # type: ignore[operator]
    assert pr.index("### Lint fixes") < pr.index("### Modernisation")
    for t in kept:
        assert f"`{(t.commit or '')[:10]}` {t.action}" in pr
    html = (result.report_dir / "report.html").read_text()  # type: ignore[operator]
    assert html.count('<details data-status="kept">') == 3 and 'type="checkbox" value="rolled_back"' in html
    _common_checks(root, result, tmp_path, formatter=False)
