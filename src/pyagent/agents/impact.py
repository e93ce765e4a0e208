"""Test-impact selection: which test files exercise which project files, from one covered baseline run.

The baseline runs under coverage.py with ``dynamic_context = test_function`` (one context per test,
for pytest and unittest alike, as pytest-testmon records). A context is attributed to the test file
whose lines it executed, so the map is file-level: ``pkg/mod.py`` -> the test files whose tests ran
any of its lines. A change is then verified by the test files that exercise the changed files, plus
every test file without coverage data (conservative); a change to anything that is not plain
project Python (conftest, config, data) runs the full suite. The run ends with one full suite, which
catches what file-level selection cannot see (a change that breaks an import only some tests do).
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["COVERAGE_RC", "TestImpact", "covered_argv", "is_test_path", "read_impact", "selected_argv"]

COVERAGE_RC = """\
[run]
dynamic_context = test_function
relative_files = True
source = {source}
data_file = {data_file}
"""


def is_test_path(path: str) -> bool:
    """A test module or test support file (same rule the planner uses for the gate's reference)."""
    p = PurePosixPath(path)
    return (
        any(part in ("tests", "test", "testing") for part in p.parts[:-1])
        or p.name.startswith("test_")
        or p.name.endswith("_test.py")
        or p.name == "conftest.py"
    )


def covered_argv(argv: Sequence[str], rcfile: Path) -> list[str] | None:
    """``argv`` run under coverage (``python -m X`` or ``pytest``), or None when it cannot be wrapped."""
    # only our own interpreter is known to have coverage.py (it is one of our dependencies)
    ours = bool(argv) and os.path.realpath(argv[0]) == os.path.realpath(sys.executable)
    if ours and len(argv) >= 3 and argv[1] == "-m":
        return [argv[0], "-m", "coverage", "run", f"--rcfile={rcfile}", "-m", *argv[2:]]
    return None


@dataclass(frozen=True)
class TestImpact:
    """The baseline's map from project files to the test files that executed them."""

    __test__ = False

    by_file: dict[str, frozenset[str]]
    test_files: frozenset[str]  # every test module of the project
    uncovered: frozenset[str]  # test modules no recorded test context belongs to

    def select(self, changed: Iterable[str]) -> list[str] | None:
        """Test files to run for a change to ``changed``; None means the full suite."""
        chosen: set[str] = set(self.uncovered)
        for path in changed:
            name = PurePosixPath(path).name
            if not path.endswith(".py") or name == "conftest.py" or name == "__init__.py":
                return None
            if path in self.test_files:
                chosen.add(path)
            chosen.update(self.by_file.get(path, ()))
        return sorted(chosen)


def _module_names(path: str) -> tuple[str, ...]:
    """The dotted names a test module may run under (package-qualified, or its bare stem)."""
    stem = path[:-3] if path.endswith(".py") else path
    parts = PurePosixPath(stem).parts
    return tuple(".".join(parts[i:]) for i in range(len(parts)))


def read_impact(data_file: Path, root: Path, test_files: Iterable[str]) -> TestImpact | None:
    """The impact map from a coverage data file written in ``root``; None when nothing was recorded."""
    from coverage import CoverageData

    if not data_file.is_file():
        return None
    data = CoverageData(basename=str(data_file))
    data.read()
    contexts_by_file: dict[str, set[str]] = {}
    for measured in data.measured_files():
        rel = Path(measured)
        if rel.is_absolute():
            try:
                rel = rel.resolve().relative_to(root.resolve())
            except ValueError:
                continue
        contexts: set[str] = set()
        for ctxs in data.contexts_by_lineno(measured).values():
            contexts.update(c for c in ctxs if c)
        if contexts:
            contexts_by_file[rel.as_posix()] = contexts
    tests = frozenset(
        t
        for t in test_files
        if t.endswith(".py")
        and is_test_path(t)
        and PurePosixPath(t).name not in ("conftest.py", "__init__.py")
    )
    owner: dict[str, set[str]] = defaultdict(set)  # context -> test files it belongs to
    for path in sorted(tests):
        names = _module_names(path)
        for ctx in contexts_by_file.get(path, ()):
            if any(ctx == n or ctx.startswith(n + ".") for n in names):
                owner[ctx].add(path)
    if not owner:
        return None
    by_file: dict[str, frozenset[str]] = {}
    for measured_path, file_contexts in contexts_by_file.items():
        owners: set[str] = set().union(*(owner.get(c, set()) for c in file_contexts))
        if owners:
            by_file[measured_path] = frozenset(owners)
    covered: set[str] = set().union(*owner.values())
    return TestImpact(by_file, tests, frozenset(tests - covered))


# pytest options whose value is the next argument (so that argument is no path to drop)
_PYTEST_VALUED = frozenset(
    {"-k", "-m", "-p", "-c", "-o", "-W", "--rootdir", "--deselect", "--ignore", "--confcutdir"}
)


def selected_argv(argv: Sequence[str], style: str, tests: Sequence[str], cwd: Path) -> list[str] | None:
    """``argv`` narrowed to the test files ``tests``, or None when this runner cannot be narrowed."""
    if style == "pytest":
        start = 3 if len(argv) >= 3 and argv[1] == "-m" else 1
        kept = list(argv[:start])
        for i in range(start, len(argv)):
            arg, prev = argv[i], argv[i - 1]
            if not arg.startswith("-") and prev not in _PYTEST_VALUED and (cwd / arg).exists():
                continue  # a path the command already names: the selection replaces it
            kept.append(arg)
        return [*kept, *tests]
    if style == "unittest" and "discover" in argv:
        patterns: list[str] = []
        for test in tests:  # unittest's -k matches "*pattern*" against module.Class.test ids
            patterns += ["-k", PurePosixPath(test).stem + "."]
        return [*argv, *patterns]
    return None
