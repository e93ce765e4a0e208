"""`improve` without an LLM on a small real project (git, pytest): complexity down, dead code out, traps caught."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from pyagent.health import CodeHealthAuditor
from pyagent.improve.run import ImproveOptions, RunResult, improve
from tests.improve_helpers import NO_PLUGINS

REPORT = '''\
"""Row statistics."""

import logging

log = logging.getLogger(__name__)


def summarize(rows, strict=False):
    """Totals by sign."""
    total = 0
    negatives = 0
    for row in rows:
        # rows below zero are refunds
        if row < 0:
            if strict:
                raise ValueError(row)
            negatives += 1
        elif row > 100:
            total += 100
        else:
            total += row
    if total > 1000:
        label = "huge"
    elif total > 100:
        label = "big"
    else:
        label = "small"
    return total, negatives, label


def audit_rows(rows):
    """Logs each bad row; operators grep the log for the function name."""
    bad = 0
    for row in rows:
        if row is None:
            log.warning("missing row")
            bad += 1
        elif row < 0:
            if row < -100:
                log.warning("very negative row %s", row)
            else:
                log.warning("negative row %s", row)
            bad += 1
        elif row > 10**6:
            log.warning("implausible row %s", row)
    return bad


def _old_format(total):
    return "%d" % total
'''

TESTS = """\
import logging

import pytest

from pkg.report import audit_rows, summarize


def test_summarize():
    assert summarize([1, 2, 300, -4]) == (103, 1, "big")
    assert summarize([]) == (0, 0, "small")
    assert summarize([100] * 11) == (1100, 0, "huge")
    with pytest.raises(ValueError):
        summarize([-1], strict=True)


def test_audit_logs_come_from_audit_rows(caplog):
    with caplog.at_level(logging.WARNING):
        assert audit_rows([None, -5, -500, 3, 10**7]) == 3
    assert [r.funcName for r in caplog.records] == ["audit_rows"] * 4
"""


def _project(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text('from pkg.report import summarize\n\n__all__ = ["summarize"]\n')
    (root / "pkg" / "report.py").write_text(REPORT)
    (root / "tests" / "test_report.py").write_text(TESTS)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [project]
            name = "rows"
            version = "0"

            [tool.pytest.ini_options]
            pythonpath = ["."]
            """
        )
    )
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


def _run(root: Path, **kw: object) -> RunResult:
    opts = ImproveOptions(
        path=root,
        test_cmd=f"{sys.executable} -m pytest",
        test_env=NO_PLUGINS,
        max_complexity=4,
        **kw,  # type: ignore[arg-type]
    )
    return asyncio.run(improve(opts))


def _show(root: Path, branch: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{branch}:{path}"], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def test_offline_improve_lowers_complexity_removes_dead_code_and_rolls_back_the_trap(tmp_path: Path) -> None:
    root = _project(tmp_path / "rows")
    result = _run(root)
    by_action = {t.action: t for t in result.tasks}

    kept = by_action["complexity:summarize"]
    assert kept.status == "kept", kept.reason
    # the logging trap: moving the log calls into a helper changes the records' funcName
    trap = by_action["complexity:audit_rows"]
    assert trap.status == "rolled_back", trap.reason
    assert "test failure" in trap.reason and "test_audit_logs_come_from_audit_rows" in trap.reason
    dead = next(t for t in result.tasks if t.action.startswith("deadcode:_old_format@"))
    assert dead.status == "kept", dead.reason

    assert result.branch is not None
    new = _show(root, result.branch, "pkg/report.py")
    auditor = CodeHealthAuditor()
    before = {f.qualname: f.complexity for f in auditor.audit_source(REPORT).functions}
    after = {f.qualname: f.complexity for f in auditor.audit_source(new).functions}
    assert after["summarize"] < before["summarize"]
    assert after["audit_rows"] == before["audit_rows"]
    assert "_old_format" not in new and "def summarize" in new and "def audit_rows" in new
    assert "# rows below zero are refunds" in new
    assert (
        result.metrics_after["functions_over_threshold"] < result.metrics_before["functions_over_threshold"]
    )
    assert result.tests_after is not None and result.tests_after.failed == 0 and result.regressions() == []
    assert (root / "pkg" / "report.py").read_text() == REPORT  # the user's tree is untouched


DYNAMIC = """\
import pkg.report as report

# looked up under a computed name at import time: no test context runs it, no text search finds it,
# and no literal prefix of it is written anywhere (the dead code agent keeps `"_old_" + kind` names)
LEGACY = getattr(report, "_".join(["", "old", "format"]))(7)


def test_legacy_format():
    assert LEGACY == "7"
"""


def test_selection_misses_an_import_time_use_and_bisect_drops_the_culprit(tmp_path: Path) -> None:
    root = tmp_path / "rows"
    _project(root)
    (root / "tests" / "test_legacy.py").write_text(DYNAMIC)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "legacy"], cwd=root, check=True
    )
    result = _run(root)
    dead = next(t for t in result.tasks if t.action.startswith("deadcode:_old_format@"))
    # the selected tests (those that run report.py's lines) passed; the full suite did not
    assert dead.status == "rolled_back", dead.reason
    assert "bisecting the kept commits" in dead.reason and "test_legacy" in dead.reason
    assert any("found by bisect" in n for n in result.notes)
    assert result.tests_after is not None and result.regressions() == []
    assert result.branch is not None
    assert "def _old_format" in _show(root, result.branch, "pkg/report.py")
    assert by_status(result, "kept")  # the other verified changes stay on the branch


def by_status(result: RunResult, status: str) -> list[str]:
    return [t.action for t in result.tasks if t.status == status]


def test_full_tests_verifies_with_the_whole_suite_and_catches_it_up_front(tmp_path: Path) -> None:
    root = tmp_path / "rows"
    _project(root)
    (root / "tests" / "test_legacy.py").write_text(DYNAMIC)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "legacy"], cwd=root, check=True
    )
    result = _run(root, full_tests=True)
    dead = next(t for t in result.tasks if t.action.startswith("deadcode:_old_format@"))
    assert dead.status == "rolled_back" and "test failure" in dead.reason, dead.reason
    assert not any("test-impact selection" in n for n in result.notes)


LEGACY = """\
import logging
import warnings

log = logging.getLogger(__name__)


def notify(msg):
    log.warn(msg)
    return msg


def old_api():
    warnings.warn("old_api is deprecated; call notify", DeprecationWarning, stacklevel=1)
    return 1
"""

LEGACY_TESTS = """\
import unittest

from pkg.legacy import notify, old_api


class TestLegacy(unittest.TestCase):
    def test_notify(self):
        self.assertEquals(notify("x"), "x")

    def test_old_api(self):
        self.assertEqual(old_api(), 1)
"""


def test_warnings_of_the_baseline_become_ruff_fixes_and_the_rest_is_listed(tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "legacy.py").write_text(LEGACY)
    (root / "tests" / "test_legacy.py").write_text(LEGACY_TESTS)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "legacy"\nversion = "0"\n\n[tool.pytest.ini_options]\npythonpath = ["."]\n'
    )
    result = _run(root, use_git=False)
    statuses = {(t.action, t.target): t.status for t in result.tasks}
    assert statuses[("deprecation:G010", "pkg/legacy.py")] == "kept"
    assert statuses[("deprecation:UP005", "tests/test_legacy.py")] == "kept"
    assert "log.warning(msg)" in (root / "pkg" / "legacy.py").read_text()
    assert "assertEquals" not in (root / "tests" / "test_legacy.py").read_text()
    dep = result.categories()["deprecations"]
    assert dep["warnings"] == [3, 1] and dep["fixed"] == 2 and dep["fixes_kept"] == 2
    [left] = dep["without_a_ruff_fix"]
    assert left["path"] == "pkg/legacy.py" and "old_api is deprecated" in left["message"]
    assert result.tests_after is not None and result.tests_after.failed == 0


TYPED = '''\
"""Prices."""


def net(price, rate):
    return price * (1 - rate)


def label(price):
    return f"{price:.2f} EUR"


def announce(text):
    print(text)
'''

TYPED_TESTS = """\
from pkg.prices import announce, label, net


def test_net():
    assert net(100, 0.25) == 75.0


def test_label_and_announce():
    assert label(3.5) == "3.50 EUR"
    announce("sale")
"""


def _typed_project(root: Path, pyproject_extra: str) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "prices.py").write_text(TYPED)
    (root / "tests" / "test_prices.py").write_text(TYPED_TESTS)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "prices"\nversion = "0"\nrequires-python = ">=3.11"\n\n'
        '[tool.pytest.ini_options]\npythonpath = ["."]\n' + pyproject_extra
    )
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


def test_types_from_the_traced_baseline_are_added_where_mypy_is_configured(tmp_path: Path) -> None:
    root = _typed_project(tmp_path / "prices", "\n[tool.mypy]\ncheck_untyped_defs = true\n")
    result = _run(root)
    task = next(t for t in result.tasks if t.agent == "types")
    assert task.status == "kept", task.reason
    assert "mypy: no new errors" in task.note
    assert result.branch is not None
    new = _show(root, result.branch, "pkg/prices.py")
    assert "def net(price: int, rate: float) -> float:" in new
    assert "def label(price: float) -> str:" in new
    assert "def announce(text: str) -> None:" in new
    types = result.categories()["types"]
    assert types["annotated_functions"] == [0, 3] and types["annotation_changes_kept"] == 1
    pr = (result.report_dir / "PR.md").read_text() if result.report_dir else ""
    assert "| fully annotated functions | 0 | 3 |" in pr
    assert result.tests_after is not None and result.regressions() == []


def test_a_project_without_a_type_checker_gets_no_annotations_unless_it_opts_in(tmp_path: Path) -> None:
    root = _typed_project(tmp_path / "plain", "")
    result = _run(root)
    assert not [t for t in result.tasks if t.agent == "types"]
    assert any("configures no type checker" in n for n in result.notes)
    opted = _run(root, agents=("types",))
    task = next(t for t in opted.tasks if t.agent == "types")
    assert task.status == "kept", task.reason and "tests only" in task.note
