"""Small real projects for the project-rules tests, and independent checks of what improve left behind.

The checks do not use PyAgent's own code paths: they run ruff with the project's configuration, the
project's declared test command and git directly, so a bug in improve cannot hide itself.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from pyagent.agents.ruff import ruff_bin

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@localhost",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@localhost",
}


def git(root: Path, *args: str) -> str:
    import os

    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True, env=env).stdout


def write_project(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (dedented) and commit them as the first commit of a new repository."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def checkout(root: Path, rev: str, dest: Path) -> Path:
    """The tree of ``rev`` in a fresh folder (``git worktree`` would register it; an archive does not)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=root, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def ruff_findings(tree: Path, *extra: str) -> Counter[tuple[str, str, str]]:
    """The project's own ``ruff check`` (its config; ``extra`` only where the project is configured by
    flake8): findings keyed by file, rule and the flagged line's text."""
    out = subprocess.run(
        [ruff_bin(), "check", "--output-format=json", "--no-cache", "--exit-zero", *extra, "."],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    keys: Counter[tuple[str, str, str]] = Counter()
    for item in json.loads(out):
        path = Path(item["filename"]).relative_to(tree.resolve()).as_posix()
        line = (tree / path).read_text().splitlines()[item["location"]["row"] - 1].strip()
        keys[(path, str(item["code"]), line)] += 1
    return keys


def branch_commits(root: Path, branch: str) -> list[str]:
    return git(root, "rev-list", "--reverse", f"main..{branch}").split()


def formatting_only(root: Path, commit: str) -> bool:
    """True when every Python file the commit changed parses to the same AST before and after."""
    changed = git(root, "diff", "--name-only", f"{commit}^", commit).split()
    for path in changed:
        if not path.endswith(".py"):
            return False
        old = git(root, "show", f"{commit}^:{path}")
        new = git(root, "show", f"{commit}:{path}")
        if ast.dump(ast.parse(old)) != ast.dump(ast.parse(new)):
            return False
    return True


def declared_count(tree: Path, argv: list[str]) -> int:
    """How many tests the project's own command runs, read from the runner's own summary line."""
    res = subprocess.run(
        [sys.executable if a == "python" else a for a in argv],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    text = res.stdout + res.stderr
    ran = re.search(r"^Ran (\d+) tests?", text, flags=re.MULTILINE)
    if ran:
        return int(ran.group(1))
    counts = re.findall(r"(\d+) (passed|failed|error|errors|skipped)", text)
    assert counts, text[-2000:]
    return sum(int(n) for n, _ in counts)


# -- the projects -----------------------------------------------------------------------------------

UNITTEST_TESTS = '''
    import unittest

    from pkg.core import area, describe


    class TestCore(unittest.TestCase):
        def test_area(self):
            self.assertEqual(area(2, 3), 6)

        def test_describe(self):
            """A docstring line: unittest -v prints it after the name."""
            self.assertEqual(describe(None), "nothing")
            self.assertEqual(describe(3), "3")
'''

# Findings of many families: F401 (unused import, safe fix), UP006/UP035 (typing.List), RET505
# (else after return), SIM108-ish shapes, I001 (unsorted imports), E711 (== None), and a hand-laid table.
CORE = '''
    import sys
    import os
    from typing import List


    TABLE = {
        "a":   1,
        "bb":  22,
        "ccc": 333,
    }


    def area(w: int, h: int) -> int:
        return w * h


    def total(items: List[int]) -> int:
        t = 0
        for i in items:
            t = t + i
        return t


    def describe(x):
        if x == None:
            return "nothing"
        else:
            return str(x)
'''


def narrow_ruff_project(root: Path) -> Path:
    """Ruff configured with a narrow select (E4, E7, E9, F); tests by a Makefile `test` target."""
    return write_project(
        root,
        {
            "pyproject.toml": """
                [project]
                name = "narrow"
                version = "0"

                [tool.ruff.lint]
                select = ["E4", "E7", "E9", "F"]
            """,
            "Makefile": "PYTHON ?= python\n\ntest:\n\t$(PYTHON) -m unittest discover -s tests -v\n",
            "pkg/__init__.py": "",
            "pkg/core.py": CORE,
            "tests/test_core.py": UNITTEST_TESTS,
        },
    )


DOCTEST_LOADER = '''
    import doctest
    import unittest

    import pkg.core
    from pkg.core import area


    def load_tests(loader, tests, ignore):
        tests.addTests(doctest.DocTestSuite(pkg.core))
        return tests


    class TestArea(unittest.TestCase):
        def test_area(self):
            self.assertEqual(area(2, 3), 6)

        def test_area_zero(self):
            self.assertEqual(area(0, 3), 0)
'''

FLAKE8_CORE = '''
    import os
    import sys
    from typing import List


    def area(w, h):
        """Area of a rectangle.

        >>> area(2, 3)
        6
        """
        return w * h


    def total(items: List[int]) -> int:
        """Sum.

        >>> total([1, 2])
        3
        """
        return sum(items)


    def describe(x):
        if x == None:
            return "nothing"
        else:
            return str(x)
'''


def flake8_project(root: Path) -> Path:
    """flake8 configured (setup.cfg: select F only); tests by tox.ini, doctests via load_tests."""
    return write_project(
        root,
        {
            "setup.cfg": "[metadata]\nname = flk\n\n[flake8]\nselect = F\nmax-line-length = 100\n",
            "tox.ini": "[tox]\nenvlist = py311\n\n[testenv]\ndeps =\ncommands =\n    python -m unittest discover -s tests -t . {posargs}\n",
            "pkg/__init__.py": "",
            "pkg/core.py": FLAKE8_CORE,
            "tests/__init__.py": "",
            "tests/test_core.py": DOCTEST_LOADER,
        },
    )


BLACK_CORE = '''
    import os
    from typing import List
    def area(w,h):
        return w*h
    def total(items: List[int]) -> int:
        return sum( items )
    def describe(x):
        if x == None:
            return 'nothing'
        return str(x)
'''

PYTEST_TESTS = '''
    from pkg.core import area, describe, total


    def test_area():
        assert area(2, 3) == 6


    def test_total():
        assert total([1, 2]) == 3


    def test_describe():
        assert describe(None) == "nothing"
'''


def black_project(root: Path) -> Path:
    """black declared ([tool.black]); no lint config; tests by a noxfile session running pytest."""
    return write_project(
        root,
        {
            "pyproject.toml": """
                [project]
                name = "blk"
                version = "0"

                [tool.black]
                line-length = 100

                [tool.pytest.ini_options]
                pythonpath = ["."]
            """,
            "noxfile.py": """
                import nox


                @nox.session
                def tests(session):
                    session.install("pytest")
                    session.run("pytest", "-q", *session.posargs)
            """,
            "pkg/__init__.py": "",
            "pkg/core.py": BLACK_CORE,
            "tests/test_core.py": PYTEST_TESTS,
        },
    )


def bare_project(root: Path) -> Path:
    """No lint, formatter or test configuration at all; unittest cases found by discovery."""
    return write_project(
        root,
        {
            "pkg/__init__.py": "",
            "pkg/core.py": CORE,
            "tests/__init__.py": "",
            "tests/test_core.py": UNITTEST_TESTS,
        },
    )
