"""The test agent: finds how a project runs its tests and records per-test outcomes.

A baseline is recorded before any change, so the gate can tell "this change broke a test" from "this
test was already failing". Tests run through ``SecureShell`` (no shell, allow-listed environment,
timeout with process-group kill), with pytest's junit XML or unittest's verbose lines giving the
per-test outcomes; a custom ``--test-cmd`` that reports neither counts as one test (its exit code).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import sys
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyagent.shell import SecureShell

__all__ = ["TestResults", "TestRunner", "discover_tests"]

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
_UNITTEST_LINE = re.compile(
    r"^(\w+) \(([\w.]+)\).*\.\.\. (ok|FAIL|ERROR|skipped.*|expected failure|unexpected success)$"
)


@dataclass(frozen=True)
class TestResults:
    """Outcome of one test run: per-test status plus how the run itself ended."""

    __test__ = False  # not a pytest test class despite the name

    outcomes: dict[str, str]  # test id -> passed | failed | error | skipped
    command: tuple[str, ...]
    exit_code: int | None
    duration: float
    timed_out: bool = False
    output_tail: str = ""
    note: str = ""

    @property
    def passed(self) -> int:
        return sum(1 for s in self.outcomes.values() if s == "passed")

    @property
    def failed(self) -> int:
        return sum(1 for s in self.outcomes.values() if s in ("failed", "error"))

    def passing(self) -> set[str]:
        return {t for t, s in self.outcomes.items() if s == "passed"}

    def regressions(self, baseline: TestResults) -> list[str]:
        """Tests that passed in ``baseline`` and did not pass here (failed, errored or vanished)."""
        mine = self.passing()
        return sorted(t for t in baseline.passing() if t not in mine)

    def summary(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": self.failed, "total": len(self.outcomes)}

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "outcomes": dict(sorted(self.outcomes.items())),
            "command": list(self.command),
            "exit_code": self.exit_code,
            "duration": round(self.duration, 3),
            "timed_out": self.timed_out,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TestResults:
        return cls(
            outcomes={str(k): str(v) for k, v in dict(d["outcomes"]).items()},
            command=tuple(d.get("command", ())),
            exit_code=d.get("exit_code"),
            duration=float(d.get("duration", 0.0)),
            timed_out=bool(d.get("timed_out", False)),
            note=str(d.get("note", "")),
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
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            data = {}
        if "pytest" in data.get("tool", {}):
            return True
    for name, section in (("setup.cfg", "tool:pytest"), ("tox.ini", "pytest")):
        path = root / name
        if path.is_file():
            parser = configparser.ConfigParser()
            try:
                parser.read(path, encoding="utf-8")
            except (configparser.Error, UnicodeDecodeError):
                continue
            if parser.has_section(section):
                return True
    return False


def _has_test_files(root: Path) -> bool:
    from pyagent._rust import walk

    files, _ = walk(str(root), extensions=["py"], excludes=[".git", ".pyagent", ".venv", "venv", ".tox"])
    for f in files:
        name = Path(f).name
        if name.startswith("test_") or name.endswith("_test.py"):
            return True
    return False


def _pytest_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytest") is not None


def discover_tests(
    root: str | os.PathLike[str], test_cmd: str | Sequence[str] | None = None
) -> TestCommand | None:
    """The project's test command, or ``None`` when it has no tests we can find.

    An explicit ``test_cmd`` wins; a pytest command there still gets per-test outcomes.
    """
    root = Path(root)
    if test_cmd:
        argv = tuple(shlex.split(test_cmd) if isinstance(test_cmd, str) else test_cmd)
        if not argv:
            raise ValueError("empty test command")
        is_pytest = any(Path(a).name in ("pytest", "py.test") for a in argv[:1]) or (
            len(argv) >= 3 and argv[1] == "-m" and argv[2] == "pytest"
        )
        if is_pytest:
            return TestCommand(argv, "pytest")
        if "unittest" in argv[:3]:
            return TestCommand(argv if "-v" in argv else (*argv, "-v"), "unittest")
        return TestCommand(argv, "exit-code")
    configured = _pytest_configured(root)
    if not configured and not _has_test_files(root):
        return None
    if _pytest_available():
        return TestCommand((sys.executable, "-m", "pytest"), "pytest")
    # Without pytest: the standard library's runner; a tests/ folder without __init__.py is its own top.
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


def parse_unittest(output: str) -> dict[str, str]:
    """Per-test outcomes from ``python -m unittest -v`` (its lines go to stderr)."""
    outcomes: dict[str, str] = {}
    for line in output.splitlines():
        m = _UNITTEST_LINE.match(line.strip())
        if not m:
            continue
        name, where, verdict = m.groups()
        status = {"ok": "passed", "FAIL": "failed", "ERROR": "error", "unexpected success": "failed"}.get(
            verdict, "skipped"
        )
        outcomes[f"{where}.{name}" if not where.endswith(name) else where] = status
    return outcomes


class TestRunner:
    """Runs one project's tests in a given directory (the real tree or an isolated copy)."""

    __test__ = False

    def __init__(
        self, command: TestCommand, shell: SecureShell | None = None, *, timeout: float = 300.0
    ) -> None:
        from pyagent.shell import SecureShell

        self.command = command
        self.timeout = timeout
        self.shell = shell or SecureShell(env_allow=TEST_ENV_ALLOW, timeout=timeout)

    async def run(self, cwd: str | Path) -> TestResults:
        cwd = Path(cwd)
        with tempfile.TemporaryDirectory(prefix="pyagent-junit-") as tmp:
            argv = list(self.command.argv)
            junit = Path(tmp) / "junit.xml"
            if self.command.style == "pytest":
                argv += ["-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={junit}"]
            env = {**_EXTRA_ENV, **self.command.extra_env}
            res = await self.shell.run(argv, cwd=str(cwd), timeout=self.timeout, env=env, writable=[tmp])
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
            if self.command.style == "exit-code" or (
                not outcomes and not note and res.exit_code not in (0, 5)
            ):
                label = " ".join(self.command.argv)
                outcomes = {label: "passed" if res.exit_code == 0 and not res.timed_out else "failed"}
            if res.timed_out:
                note = f"test run timed out after {self.timeout:.0f}s"
        return TestResults(
            outcomes=outcomes,
            command=tuple(argv),
            exit_code=res.exit_code,
            duration=res.duration,
            timed_out=res.timed_out,
            output_tail=output[-4000:],
            note=note,
        )
