"""A tiny real project (package + pytest tests) that the improve pipeline's tests work on."""

from __future__ import annotations

import textwrap
from pathlib import Path

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
from pkg.mod import name, total
from pkg.registry import REGISTRY


def test_total():
    assert total([1, 2, 3]) == 6


def test_name():
    assert name(None) == "none"
    assert name(3) == "3"


def test_plugin_registered():
    assert REGISTRY["double"](4) == 8
"""


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
    )
    return root
