"""The dead code agent on a small real project: private dead code goes, public API and used names stay."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from pyagent.agents.deadcode import find_dead_code, remove_dead

CORE = '''\
"""Core of the sample package."""

import functools

REGISTRY = {}


def register(fn):
    REGISTRY[fn.__name__] = fn
    return fn


def public_api(x):
    """Public: exported, never removed even though nothing here calls it."""
    return _double(x) + _used_in_tests(x)


def _double(x):
    return 2 * x


# -- helpers below ------------------------------------------------------------


# attached comment: goes with the function
def _unused_helper(x):
    return x + 1


def _used_in_tests(x):
    return x


def _looked_up_by_name(x):
    return -x


@register
def _plugin(x):
    return x


class _DeadClass:
    pass


class Widget:
    def size(self):
        return self._dead_method() if False else 3

    def _never_called(self):
        return 0


def early(x):
    if x:
        return 1
    return 2
    print("never printed")  # unreachable


def dispatch(name, x):
    return getattr(__import__("pkg.core").core, "_looked_up_by_name")(x)


@functools.lru_cache(maxsize=None)
def cached(x):
    return x
'''

TESTS = """\
import pytest

from pkg import public_api
from pkg.core import _used_in_tests, dispatch, early, cached, REGISTRY, Widget


# an autouse fixture: pytest calls it, though no code names it (humanize's tests have one)
@pytest.fixture(autouse=True)
def _warm_cache():
    cached(0)


def test_public():
    assert public_api(2) == 6
    assert _used_in_tests(3) == 3


def test_rest():
    assert early(1) == 1 and early(0) == 2
    assert dispatch("x", 4) == -4
    assert cached(5) == 5
    assert "_plugin" in REGISTRY
    assert Widget().size() == 3
"""


def make_dead_project(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text('from pkg.core import public_api\n\n__all__ = ["public_api"]\n')
    (root / "pkg" / "core.py").write_text(CORE)
    (root / "tests" / "test_core.py").write_text(TESTS)
    (root / "pyproject.toml").write_text('[project]\nname = "deadsample"\nversion = "0"\n')
    return root


FILES = ["pkg/__init__.py", "pkg/core.py", "tests/test_core.py"]


def test_finds_only_private_unreferenced_code(tmp_path: Path) -> None:
    root = make_dead_project(tmp_path / "p")
    found = {(i.kind, i.name) for i in find_dead_code(root, FILES)}
    names = {n for _k, n in found}
    assert {"_unused_helper", "_DeadClass", "_never_called"} <= names
    assert ("unreachable_code", "return") in found
    assert ("unreachable_code", "ternary") not in found  # a dead branch of an expression is no statement
    # public, exported, used by tests, looked up by string, registered by a decorator: all kept
    for kept in (
        "public_api",
        "_used_in_tests",
        "_looked_up_by_name",
        "_plugin",
        "_double",
        "cached",
        "size",
        "_warm_cache",
    ):
        assert kept not in names


def test_removal_keeps_headings_and_the_project_green(tmp_path: Path) -> None:
    root = make_dead_project(tmp_path / "p")
    source = (root / "pkg" / "core.py").read_text()
    for item in find_dead_code(root, FILES):
        source, removed = remove_dead(source, item.kind, item.name, item.line, item.last_line)
        assert removed >= 1, item
        # later items' line numbers are from the original text; re-find them by name where needed
        (root / "pkg" / "core.py").write_text(source)
        break
    source = (root / "pkg" / "core.py").read_text()
    for kind, name in (("class", "_DeadClass"), ("method", "_never_called")):
        line = next(n.lineno for n in ast.walk(ast.parse(source)) if getattr(n, "name", None) == name)
        source, removed = remove_dead(source, kind, name, line, line)
        assert removed == 1
    (root / "pkg" / "core.py").write_text(source)
    tree = ast.parse(source)
    defined = {getattr(n, "name", None) for n in ast.walk(tree)}
    assert not defined & {"_DeadClass", "_never_called"}
    assert "# -- helpers below" in source and "def public_api" in source
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_unknown_name_changes_nothing() -> None:
    assert remove_dead("def _a():\n    pass\n", "function", "_b", 1, 2) == ("def _a():\n    pass\n", 0)


def test_methods_reached_through_a_built_name_are_kept(tmp_path: Path) -> None:
    # sqlparse's filters: `getattr(self, f"_process_{type(tlist).__name__}".lower(), ...)`
    root = tmp_path / "q"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "filters.py").write_text(
        "class Walker:\n"
        "    def process(self, node):\n"
        "        func = getattr(self, f'_process_{type(node).__name__}'.lower(), self._process_default)\n"
        "        return func(node)\n\n"
        "    def visit(self, kind):\n"
        "        return getattr(self, '_visit_' + kind)()\n\n"
        "    def _process_default(self, node):\n        return node\n\n"
        "    def _process_where(self, node):\n        return 'where'\n\n"
        "    def _visit_join(self):\n        return 'join'\n\n"
        "    def _really_unused(self):\n        return 0\n"
    )
    found = {i.name for i in find_dead_code(root, ["pkg/__init__.py", "pkg/filters.py"])}
    assert found == {"_really_unused"}
