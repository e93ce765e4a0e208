"""Which command runs a project's tests: the one its maintainers declared.

Order: ``--test-cmd``; ``[tool.pyagent] test-cmd``; tox.ini (or pyproject's ``legacy_tox_ini``);
noxfile.py; a Makefile ``test`` target; a CI workflow's test step; then discovery from the tests'
content. A declared command is run as written, with ``python``/``pytest``/``coverage run -m`` pointed
at the interpreter PyAgent runs in, so the same project gets the same command on every machine. A
runner that is not installed stops the run with what to install; nothing falls back to a runner that
sees a fraction of the suite.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import re
import shlex
import shutil
import sys
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pyagent.agents.testing import TestCommand, command_from_argv, discover_tests

__all__ = ["ChosenTests", "TestCommandError", "choose_test_command"]

_PYTHONS = ("python", "python3", "{envpython}", "$(PYTHON)", "${PYTHON}")
_SHELL_SYNTAX = re.compile(r"&&|\|\||[|;<>`]|\$\(")
_RUNNERS = ("pytest", "py.test", "unittest", "nose2", "green")


class TestCommandError(Exception):
    """The declared test command cannot run here; the message says what to install or pass."""

    __test__ = False


@dataclass(frozen=True)
class ChosenTests:
    """The test command a run gates on and where it came from (printed and reported)."""

    __test__ = False

    command: TestCommand | None
    source: str  # e.g. "tox.ini [testenv] commands"
    declared: str  # the command as the project wrote it

    def describe(self) -> str:
        if self.command is None:
            return f"no test command ({self.source})"
        return f"`{shlex.join(self.command.argv)}` (from {self.source})"


@dataclass(frozen=True)
class _Declared:
    """A test command found in the project: as this interpreter runs it, as written, and where."""

    argv: list[str]
    line: str
    source: str


def _normalize(argv: list[str]) -> list[str] | None:
    """A declared command as this interpreter runs it; None when it is not a test runner we know."""
    if not argv:
        return None
    if argv[0] in _PYTHONS or Path(argv[0]).name in ("python", "python3"):
        argv = [sys.executable, *argv[1:]]
    elif Path(argv[0]).name in ("pytest", "py.test"):
        argv = [sys.executable, "-m", "pytest", *argv[1:]]
    elif argv[0] == "coverage" and len(argv) > 1 and argv[1] == "run":  # the measurement is not the test
        rest = argv[2:]
        while rest and rest[0].startswith("-") and rest[0] != "-m":
            rest = rest[1:] if "=" in rest[0] or rest[0] in ("-p", "--parallel-mode", "--branch") else rest[2:]
        argv = [sys.executable, *rest] if rest[:1] == ["-m"] else []
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m" and argv[2] in _RUNNERS:
        return argv
    return None


def _tox_substitute(line: str) -> str | None:
    line = re.sub(r"\{posargs:([^}]*)\}", r"\1", line)
    line = line.replace("{posargs}", "").replace("[]", "").replace("{toxinidir}", ".")
    line = line.replace("{envpython}", "python")
    return None if "{" in line else line


def _logical_lines(value: str) -> Iterator[str]:
    for line in value.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line.lstrip("-").strip()  # tox's leading '-' ignores the exit code; the command is the same


def _from_lines(lines: Sequence[str], source: str) -> _Declared | None:
    for line in lines:
        if _SHELL_SYNTAX.search(line):
            continue
        try:
            argv = shlex.split(line)
        except ValueError:
            continue
        norm = _normalize(argv)
        if norm is not None:
            return _Declared(norm, line, source)
    return None


def _from_tox_text(text: str, label: str) -> _Declared | None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    sections = ["testenv"] + [s for s in parser.sections() if s.startswith("testenv:")]
    for section in sections:
        if parser.has_option(section, "commands"):
            lines = [s for s in map(_tox_substitute, _logical_lines(parser.get(section, "commands"))) if s]
            found = _from_lines(lines, f"{label} [{section}] commands")
            if found is not None:
                return found
    return None


def _legacy_tox_ini(root: Path) -> str | None:
    """pyproject.toml's ``[tool.tox] legacy_tox_ini``, if it has one."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        legacy = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("tox", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    text = legacy.get("legacy_tox_ini") if isinstance(legacy, dict) else None
    return text if isinstance(text, str) else None


def _tox(root: Path) -> _Declared | None:
    ini = root / "tox.ini"
    texts = [("tox.ini", ini.read_text(encoding="utf-8", errors="replace"))] if ini.is_file() else []
    legacy = _legacy_tox_ini(root)
    if legacy is not None:
        texts.append(("pyproject.toml [tool.tox] legacy_tox_ini", legacy))
    for label, text in texts:
        found = _from_tox_text(text, label)
        if found is not None:
            return found
    return None


def _nox(root: Path) -> _Declared | None:
    path = root / "noxfile.py"
    if not path.is_file():
        return None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return None
    sessions = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.decorator_list]
    sessions.sort(key=lambda f: (f.name not in ("tests", "test", "unit", "pytest"), f.lineno))
    for fn in sessions:
        for node in ast.walk(fn):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "run"
            ):
                continue
            argv = []
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    argv.append(arg.value)
                elif isinstance(arg, ast.Starred):  # *session.posargs: nothing by default
                    continue
                else:
                    argv = []
                    break
            norm = _normalize(argv)
            if norm is not None:
                return _Declared(norm, shlex.join(argv), f"noxfile.py session {fn.name!r}")
    return None


def _make(root: Path) -> _Declared | None:
    path = root / "Makefile"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    variables = {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[:?]?=\s*(.*)$", text, flags=re.MULTILINE)
    }
    for target in ("test", "tests"):
        m = re.search(rf"^{target}\s*:[^=\n]*\n((?:\t.*\n?)*)", text, flags=re.MULTILINE)
        if m is None:
            continue
        lines = []
        for line in m.group(1).splitlines():
            line = line.strip().lstrip("@-").strip()
            for name, value in variables.items():
                if name != "PYTHON" or value in ("python", "python3"):
                    line = line.replace(f"$({name})", value).replace(f"${{{name}}}", value)
            if line.split()[:1] == ["tox"]:
                found_tox = _tox(root)
                if found_tox is not None:
                    return replace(found_tox, source=f"Makefile `{target}` target -> {found_tox.source}")
            lines.append(line)
        found = _from_lines(lines, f"Makefile `{target}` target")
        if found is not None:
            return found
    return None


def _ci(root: Path) -> _Declared | None:
    workflows = root / ".github" / "workflows"
    if not workflows.is_dir():
        return None
    for wf in sorted([*workflows.glob("*.yml"), *workflows.glob("*.yaml")]):
        lines = []
        for raw in wf.read_text(encoding="utf-8", errors="replace").splitlines():
            line = re.sub(r"^\s*(-\s*)?(run:\s*)?", "", raw).strip().strip("'\"")
            if line and not line.endswith(("|", ">")):
                lines.append(line)
        found = _from_lines(lines, f"the test step of {wf.relative_to(root).as_posix()}")
        if found is not None:
            return found
    return None


def _check_runner(command: TestCommand, source: str, declared: str) -> None:
    argv = command.argv
    if argv[0] == sys.executable and len(argv) >= 3 and argv[1] == "-m":
        module = argv[2]
        if importlib.util.find_spec(module) is None:
            raise TestCommandError(
                f"the project's test command `{declared}` (from {source}) needs {module}, which is not "
                f"installed for {sys.executable}: install it (pip install {module}) or pass --test-cmd"
            )
    elif shutil.which(argv[0]) is None and not Path(argv[0]).is_file():
        raise TestCommandError(
            f"the test command `{declared}` (from {source}) needs {argv[0]!r}, which is not on PATH: "
            "install it or pass --test-cmd"
        )


def choose_test_command(
    root: str | os.PathLike[str], cli: str | None = None, configured: str | None = None
) -> ChosenTests:
    """The command the run gates on, and where it was declared; see the module docstring."""
    root = Path(root)
    chosen: ChosenTests | None = None
    for given, source in ((cli, "--test-cmd"), (configured, "pyproject.toml [tool.pyagent] test-cmd")):
        if given is not None:
            try:
                argv = shlex.split(given)
                norm = _normalize(argv) or argv
                chosen = ChosenTests(command_from_argv(norm), source, given)
            except ValueError as exc:
                raise TestCommandError(f"{source}: {exc}") from exc
            break
    if chosen is None:
        for finder in (_tox, _nox, _make, _ci):
            found = finder(root)
            if found is not None:
                chosen = ChosenTests(command_from_argv(found.argv), found.source, found.line)
                break
    if chosen is None:
        command = discover_tests(root)
        if command is None:
            return ChosenTests(None, "no test command is declared and no test files were found", "")
        why = "pytest configuration or tests written for pytest" if command.style == "pytest" else (
            "unittest test cases"
        )
        chosen = ChosenTests(command, f"discovery: {why}", shlex.join(command.argv))
    assert chosen.command is not None
    _check_runner(chosen.command, chosen.source, chosen.declared)
    return chosen
