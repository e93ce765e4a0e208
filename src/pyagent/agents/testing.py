"""The test agent: finds how a project runs its tests and records per-test outcomes.

A baseline is recorded before any change, so the gate can tell "this change broke a test" from "this
test was already failing". Tests run through ``SecureShell`` (no shell, allow-listed environment,
timeout with process-group kill), with pytest's junit XML or unittest's verbose lines giving the
per-test outcomes; a custom ``--test-cmd`` that reports neither counts as one test (its exit code).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.agents._config_files import has_ini_section, pyproject
from pyagent.agents.base import BaseAgent
from pyagent.agents.test_results import TestResults
from pyagent.agents.worker import AgentOutcome
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask

if TYPE_CHECKING:
    from pyagent.model.context import CascadeContext
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.shell import SecureShell

__all__ = ["TestAgent", "TestCommand", "command_from_argv", "discover_tests"]

# Variables a project's tests may legitimately need; everything else (API keys included) stays out.
# PYTHONPATH is left out on purpose: pointing at the real tree, it would make the gate test the wrong code.
TEST_ENV_ALLOW: tuple[str, ...] = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "TZ",
    "SYSTEMROOT",
    "PYTEST_ADDOPTS",
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
)
_EXTRA_ENV: dict[str, str] = {"PYTHONDONTWRITEBYTECODE": "1", "NO_COLOR": "1", "PYTHONHASHSEED": "0"}
_UNITTEST_VERDICT = re.compile(r"^(.*?) \.\.\. (ok|FAIL|ERROR|skipped.*|expected failure|unexpected success)$")
_UNITTEST_TEST = re.compile(r"^(\w+) \(([\w.]+)\)")
_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in ", re.MULTILINE)
_WARNING_LINE = re.compile(
    r"^\s*(?P<path>[^\s:][^:]*\.py):(?P<line>\d+): "
    r"(?P<cat>DeprecationWarning|PendingDeprecationWarning|FutureWarning): (?P<msg>.*)$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class TestCommand:
    """How to run a project's tests: the argv and how its per-test outcomes are read."""

    __test__ = False

    argv: tuple[str, ...]
    style: str  # pytest | unittest | exit-code
    extra_env: dict[str, str] = field(default_factory=dict)


def _pytest_configured(root: Path) -> bool:
    for name in ("pytest.ini", ".pytest.ini"):
        if (root / name).is_file():
            return True
    if "pytest" in pyproject(root).get("tool", {}):
        return True
    return has_ini_section(root, (("setup.cfg", "tool:pytest"), ("tox.ini", "pytest")))


def _test_files(root: Path) -> list[Path]:
    from pyagent._rust import walk

    walked = walk(str(root), extensions=["py"], excludes=[".git", ".pyagent", ".venv", "venv", ".tox"])
    out = []
    for f in walked.files:
        name = Path(f).name
        if name.startswith("test_") or name.endswith("_test.py"):
            out.append(Path(f) if Path(f).is_absolute() else root / f)
    return sorted(out)


_PYTEST_STYLE = re.compile(r"^(import pytest|from pytest|from _pytest|def test_|async def test_)", re.MULTILINE)


def _written_for_pytest(files: Sequence[Path]) -> bool:
    """Tests that import pytest or are plain ``def test_*`` functions need pytest to run at all."""
    for f in files:
        try:
            if _PYTEST_STYLE.search(f.read_text(encoding="utf-8", errors="replace")):
                return True
        except OSError:
            continue
    return False


def command_from_argv(argv: Sequence[str]) -> TestCommand:
    """A test command as given, with the reporting its runner needs (pytest's junit, unittest's -v)."""
    argv = tuple(argv)
    if not argv:
        raise ValueError("empty test command")
    is_pytest = Path(argv[0]).name in ("pytest", "py.test") or (
        len(argv) >= 3 and argv[1] == "-m" and argv[2] in ("pytest", "py.test")
    )
    if is_pytest:
        return TestCommand(argv, "pytest")
    if len(argv) >= 3 and argv[1] == "-m" and argv[2] == "unittest":
        return TestCommand(argv if "-v" in argv else (*argv, "-v"), "unittest")
    return TestCommand(argv, "exit-code")


def discover_tests(
    root: str | os.PathLike[str], test_cmd: str | Sequence[str] | None = None
) -> TestCommand | None:
    """The project's test command, or ``None`` when it has no tests we can find.

    An explicit ``test_cmd`` wins; a pytest command there still gets per-test outcomes. Otherwise the
    project's content decides, never what happens to be installed: pytest configuration or tests
    written for pytest mean pytest; tests that are all ``unittest`` cases mean the standard runner.
    """
    root = Path(root)
    if test_cmd:
        return command_from_argv(shlex.split(test_cmd) if isinstance(test_cmd, str) else test_cmd)
    files = _test_files(root)
    if _pytest_configured(root) or (root / "conftest.py").is_file() or _written_for_pytest(files):
        return TestCommand((sys.executable, "-m", "pytest"), "pytest")
    if not files:
        return None
    # A tests/ folder without __init__.py is its own top.
    start = (
        ("-s", "tests") if (root / "tests").is_dir() and not (root / "tests" / "__init__.py").exists() else ()
    )
    return TestCommand((sys.executable, "-m", "unittest", "discover", *start, "-v"), "unittest")


def parse_junit(xml_text: str) -> dict[str, str]:
    """Per-test outcomes from pytest's junit XML (a collection error counts as an errored test)."""
    outcomes: dict[str, str] = {}
    root = ET.fromstring(xml_text)
    for case in root.iter("testcase"):
        classname = case.get("classname", "")
        name = case.get("name", "")
        test_id = f"{classname}::{name}" if classname else name
        status = "passed"
        for child in case:
            if child.tag == "failure":
                status = "failed"
            elif child.tag == "error":
                status = "error"
            elif child.tag == "skipped":
                status = "skipped"
        outcomes[test_id] = status
    return outcomes


def parse_warnings(output: str, cwd: Path) -> tuple[tuple[str, int, str, str], ...]:
    """Deprecation-type warnings in a test run's output whose file lies inside ``cwd`` (POSIX, relative)."""
    base = cwd.resolve()
    seen: dict[tuple[str, int, str, str], None] = {}
    for m in _WARNING_LINE.finditer(output):
        path = Path(m["path"])
        try:
            rel = (path if path.is_absolute() else base / path).resolve().relative_to(base)
        except (ValueError, OSError):
            continue  # a warning from an installed library, not from the project
        if any(part in ("site-packages", ".venv", "venv") for part in rel.parts):
            continue
        seen[(rel.as_posix(), int(m["line"]), m["cat"], m["msg"].strip()[:300])] = None
    return tuple(seen)


def parse_unittest(output: str) -> dict[str, str]:
    """Per-test outcomes from ``python -m unittest -v`` (its lines go to stderr).

    A test with a docstring (and every doctest) prints its name on one line and the description with
    the verdict on the next; both forms are read.
    """
    outcomes: dict[str, str] = {}
    previous = ""
    for raw in output.splitlines():
        line = raw.strip()
        m = _UNITTEST_VERDICT.match(line)
        if not m:
            previous = line
            continue
        head, verdict = m.groups()
        test = _UNITTEST_TEST.match(head) or _UNITTEST_TEST.match(previous)
        previous = ""
        if test is None:
            continue
        name, where = test.groups()
        status = {"ok": "passed", "FAIL": "failed", "ERROR": "error", "unexpected success": "failed"}.get(
            verdict, "skipped"
        )
        test_id = f"{where}.{name}" if not where.endswith(name) else where
        while test_id in outcomes:  # two doctests of one name in a module: both count
            test_id += "'"
        outcomes[test_id] = status
    return outcomes


def unittest_ran(output: str) -> int | None:
    """The runner's own count (``Ran N tests``), to check the per-test parse against."""
    m = _UNITTEST_RAN.search(output)
    return int(m.group(1)) if m else None


class TestAgent(BaseAgent):
    """The test agent: runs one project's tests in a workspace (an isolated copy) and reports them.

    The same ``run(task, workspace)`` contract as every agent; the outcome's ``tests`` holds the
    results. A task's params choose the run (:meth:`task` builds one): ``select`` narrows it to some
    test files (the gate's test-impact selection), ``impact_files`` runs it under coverage.py with
    per-test contexts and maps those project files to the tests that exercise them (the baseline),
    ``trace_out`` records the types the calls saw (the types agent).
    """

    __test__ = False
    name = "tests"
    capabilities = frozenset({"tests"})

    def __init__(
        self,
        command: TestCommand,
        shell: SecureShell | None = None,
        *,
        timeout: float = 300.0,
        knowledge: KnowledgeBackend | None = None,
    ) -> None:
        from pyagent.shell import SecureShell

        super().__init__(knowledge=knowledge)
        self.command = command
        self.commands = (Path(command.argv[0]).name,)
        self.timeout = timeout
        self.shell = shell or SecureShell(env_allow=TEST_ENV_ALLOW, timeout=timeout)

    def task(
        self,
        context: CascadeContext,
        *,
        task_id: str | None = None,
        select: Sequence[str] | None = None,
        impact_files: Sequence[str] | None = None,
        trace_out: Path | None = None,
        priority: AgentPriority = AgentPriority.HIGH,
    ) -> AgentTask:
        """A test run as a task of the chain ``context`` belongs to (it spends that chain's budget)."""
        params: dict[str, Any] = {"action": "run the tests"}
        if select is not None:
            params["select"] = list(select)
        if impact_files is not None:
            params["impact_files"] = list(impact_files)
        if trace_out is not None:
            params["trace_out"] = str(trace_out)
        return AgentTask(
            id=task_id or f"{context.task_id}/tests",
            agent=self.name,
            kind="tests",
            target=".",
            files=(),
            priority=priority,
            context=context,
            params=params,
        )

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        params = task.params
        trace = params.get("trace_out")
        trace_out = Path(trace) if isinstance(trace, str) else None
        impact_files = params.get("impact_files")
        if impact_files is not None:
            results = await self._record_impact(Path(workspace), list(impact_files), trace_out)
        else:
            select = params.get("select")
            results = await self._run_suite(
                Path(workspace), select=None if select is None else list(select), trace_out=trace_out
            )
        summary = f"{results.passed} passed, {results.failed} failed of {len(results.outcomes)} test(s)"
        return AgentOutcome(note=summary + (f" ({results.note})" if results.note else ""), tests=results)

    async def _record_impact(
        self, cwd: Path, files: Sequence[str], trace_out: Path | None
    ) -> TestResults:
        """The baseline run under coverage.py with per-test contexts, with the impact map it yields.

        ``files`` lists the project's files (POSIX, relative to ``cwd``); its test modules are the
        units a change selects.
        """
        from pyagent.agents.impact import COVERAGE_RC, covered_argv, read_impact

        with tempfile.TemporaryDirectory(prefix="pyagent-impact-") as tmp:
            rc, data = Path(tmp) / "coveragerc", Path(tmp) / "coverage.data"
            rc.write_text(COVERAGE_RC.format(source=cwd, data_file=data), encoding="utf-8")
            if covered_argv(self.command.argv, rc) is None:
                return await self._run_suite(cwd, trace_out=trace_out)
            results = await self._run_suite(cwd, coverage_rc=rc, trace_out=trace_out)
            try:
                impact = read_impact(data, cwd, files)
            except Exception:  # an unreadable data file means no selection, never a failed run
                impact = None
        return dataclasses.replace(results, impact=impact)

    async def _run_suite(
        self,
        cwd: Path,
        *,
        select: Sequence[str] | None = None,
        coverage_rc: Path | None = None,
        trace_out: Path | None = None,
    ) -> TestResults:
        """Run the suite in ``cwd``; ``select`` narrows it to those test files, ``coverage_rc`` covers it,
        ``trace_out`` receives the types its calls saw (:mod:`pyagent.agents.typetrace`)."""
        from pyagent.agents.impact import covered_argv, selected_argv
        from pyagent.agents.typetrace import traced_argv
        from pyagent.shell.confine import describe, refusals

        with tempfile.TemporaryDirectory(prefix="pyagent-junit-") as tmp:
            argv = list(self.command.argv)
            if select is not None:
                argv = selected_argv(argv, self.command.style, select, cwd) or argv
            junit = Path(tmp) / "junit.xml"
            if self.command.style == "pytest":
                argv += ["-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={junit}"]
            shown = list(argv)  # the project's command as reported; coverage's wrapper is ours
            if coverage_rc is not None:
                argv = covered_argv(argv, coverage_rc) or argv
            env = {**_EXTRA_ENV, **self.command.extra_env}
            # coverage writes its data file beside its rcfile
            writable = [tmp] if coverage_rc is None else [tmp, str(coverage_rc.parent)]
            if trace_out is not None and (traced := traced_argv(argv, trace_out, cwd)) is not None:
                argv = traced
                writable.append(str(trace_out.parent))
            res = await self.shell.run(argv, cwd=str(cwd), timeout=self.timeout, env=env, writable=writable)
            output = (res.stdout or "") + (res.stderr or "")
            outcomes: dict[str, str] = {}
            note = ""
            if self.command.style == "pytest" and junit.is_file():
                try:
                    outcomes = parse_junit(junit.read_text(encoding="utf-8", errors="replace"))
                except ET.ParseError as exc:
                    note = f"unreadable junit xml: {exc}"
            elif self.command.style == "unittest":
                outcomes = parse_unittest(output)
                ran = unittest_ran(output)
                if ran is not None and ran != len(outcomes):
                    note = f"unittest ran {ran} tests; {len(outcomes)} could be read from its output"
            if self.command.style == "exit-code" or (
                not outcomes and not note and res.exit_code not in (0, 5)
            ):
                label = " ".join(self.command.argv)
                outcomes = {label: "passed" if res.exit_code == 0 and not res.timed_out else "failed"}
            if res.timed_out:
                note = f"test run timed out after {self.timeout:.0f}s"
        return TestResults(
            outcomes=outcomes,
            command=tuple(shown),
            exit_code=res.exit_code,
            duration=res.duration,
            timed_out=res.timed_out,
            output_tail=output[-4000:],
            warnings=parse_warnings(output, cwd),
            note=note,
            sandbox=(describe(res.protections), *refusals(output, res.protections)) if res.protections else (),
        )
