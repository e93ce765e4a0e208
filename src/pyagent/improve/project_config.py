"""What a project declares about itself: its lint rules, its formatter and its ``[tool.pyagent]`` options.

``improve`` works inside these rules: findings come from the project's own ruff configuration (or its
flake8 configuration mapped to ruff, or a small default of bug-class rules when it has none), files are
formatted only when the project declares a formatter, and ``[tool.pyagent]`` holds the per-project
options (the command line wins over it).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyagent.agents.ruff import LintRules, known_rule

__all__ = [
    "DEFAULT_RULES",
    "FormatterChoice",
    "ProjectConfigError",
    "PyAgentConfig",
    "choose_formatter",
    "lint_rules",
    "load_pyagent_config",
    "python_files",
]

# Without any lint configuration: bug-class rules only. Pyflakes (undefined names, unused imports and
# variables), syntax and IO errors, bugbear's bug risks; getattr/setattr with a constant (B009/B010)
# are style and left out. No import sorting, no else-after-return, no operand swapping.
DEFAULT_SELECT: tuple[str, ...] = ("F", "E9", "B")
DEFAULT_IGNORE: tuple[str, ...] = ("B009", "B010")
# Selection goes in ruff's --select/--ignore flags: ruff applies inline `--config lint.ignore` after a
# `lint.select` inconsistently (the order of the two changed the result in 0.17).
DEFAULT_RULES = LintRules(
    ("--isolated", f"--select={','.join(DEFAULT_SELECT)}", f"--ignore={','.join(DEFAULT_IGNORE)}"),
    "no lint configuration found: the default bug-class rules F (pyflakes), E9 (syntax errors), "
    "B (bugbear) except B009/B010",
)
# flake8's own defaults, for a [flake8] section that leaves them out.
_FLAKE8_SELECT = ("E", "F", "W", "C90")
_FLAKE8_IGNORE = ("E121", "E123", "E126", "E226", "E24", "E704", "W503", "W504")
_FLAKE8_FILES = ("setup.cfg", "tox.ini", ".flake8")  # flake8's search order
FORMATTERS = ("ruff", "black", "none", "auto")
# A tree the formatter already leaves unchanged in at least this share of files (and >= 10 files) is
# taken to use it.
IMPLICIT_FORMATTED_SHARE = 0.95
IMPLICIT_MIN_FILES = 10


class ProjectConfigError(ValueError):
    """A project setting PyAgent cannot use; the message names the file and the setting."""


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProjectConfigError(f"{path.name} is not readable TOML: {exc}") from exc


def _pyproject(root: Path) -> dict[str, Any]:
    return _toml(root / "pyproject.toml")


def _ruff_config_file(root: Path) -> str | None:
    for name in ("ruff.toml", ".ruff.toml"):
        if (root / name).is_file():
            return name
    if "ruff" in _pyproject(root).get("tool", {}):
        return "pyproject.toml [tool.ruff]"
    return None


def _ini(path: Path) -> configparser.ConfigParser | None:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ProjectConfigError(f"{path.name} is not a readable ini file: {exc}") from exc
    return parser


def _codes(value: str) -> list[str]:
    return [c for c in re.split(r"[,\s]+", value) if c]


def _flake8_section(root: Path) -> tuple[str, configparser.SectionProxy] | None:
    for name in _FLAKE8_FILES:
        path = root / name
        if path.is_file():
            parser = _ini(path)
            if parser is not None and parser.has_section("flake8"):
                return name, parser["flake8"]
    return None


def _toml_list(values: list[str]) -> str:
    return json.dumps(values)


def _flake8_rules(name: str, section: configparser.SectionProxy) -> LintRules:
    """flake8's select/ignore/max-line-length/max-complexity/per-file-ignores/exclude as ruff settings."""
    select = _codes(section.get("select", "")) or list(_FLAKE8_SELECT)
    select += _codes(section.get("extend-select", section.get("extend_select", "")))
    ignore = _codes(section.get("ignore", "")) if "ignore" in section else list(_FLAKE8_IGNORE)
    ignore += _codes(section.get("extend-ignore", section.get("extend_ignore", "")))
    max_cc = section.get("max-complexity", section.get("max_complexity", "")).strip()
    if not max_cc or int(max_cc) < 0:  # flake8's mccabe reports nothing without max-complexity
        select = [s for s in select if not s.startswith("C9") and s != "C"]
    dropped = sorted({s for s in select + ignore if not known_rule(s)})
    select = [s for s in select if known_rule(s)]
    ignore = [s for s in ignore if known_rule(s)]
    args = ["--isolated", f"--select={','.join(select)}"]
    if ignore:
        args.append(f"--ignore={','.join(ignore)}")
    length = section.get("max-line-length", section.get("max_line_length", "79")).strip() or "79"
    args.append(f"--line-length={int(length)}")
    if max_cc and int(max_cc) >= 0:
        args += ["--config", f"lint.mccabe.max-complexity = {int(max_cc)}"]
    per_file: dict[str, list[str]] = {}
    for line in re.split(r"\n", section.get("per-file-ignores", section.get("per_file_ignores", ""))):
        pattern, _, codes = line.partition(":")
        if pattern.strip() and codes.strip():
            per_file.setdefault(pattern.strip(), []).extend(c for c in _codes(codes) if known_rule(c))
    if per_file:
        table = ", ".join(f"{json.dumps(k)} = {_toml_list(v)}" for k, v in per_file.items())
        args += ["--config", f"lint.per-file-ignores = {{{table}}}"]
    for key in ("exclude", "extend-exclude"):
        for pattern in _codes(section.get(key, "")):
            args += ["--extend-exclude", pattern.rstrip("/")]
    origin = f"flake8 configuration in {name} [flake8], mapped to ruff (select {','.join(select)})"
    if dropped:
        origin += f"; codes ruff does not implement were left out: {','.join(dropped)}"
    return LintRules(tuple(args), origin)


def lint_rules(root: str | os.PathLike[str]) -> LintRules:
    """The rules ``improve`` lints ``root`` by: its ruff config, else its flake8 config, else the default."""
    root = Path(root)
    ruff_file = _ruff_config_file(root)
    if ruff_file is not None:
        return LintRules((), f"the project's ruff configuration ({ruff_file})")
    found = _flake8_section(root)
    if found is not None:
        try:
            return _flake8_rules(*found)
        except ValueError as exc:
            raise ProjectConfigError(f"{found[0]} [flake8]: {exc}") from exc
    return DEFAULT_RULES


@dataclass(frozen=True)
class FormatterChoice:
    """The formatter a run may use (``None``: never format) and why."""

    name: str | None
    origin: str


def _declared_formatter(root: Path) -> FormatterChoice | None:
    tool = _pyproject(root).get("tool", {})
    if "format" in tool.get("ruff", {}):
        return FormatterChoice("ruff", "pyproject.toml declares [tool.ruff.format]")
    for name in ("ruff.toml", ".ruff.toml"):
        if "format" in _toml(root / name):
            return FormatterChoice("ruff", f"{name} declares [format]")
    if "black" in tool:
        return FormatterChoice("black", "pyproject.toml declares [tool.black]")
    pre_commit = root / ".pre-commit-config.yaml"
    if pre_commit.is_file():
        text = pre_commit.read_text(encoding="utf-8", errors="replace")
        ids = re.findall(r"^\s*-?\s*id:\s*['\"]?([\w-]+)", text, flags=re.MULTILINE)
        if "ruff-format" in ids:
            return FormatterChoice("ruff", ".pre-commit-config.yaml runs the ruff-format hook")
        if "black" in ids:
            return FormatterChoice("black", ".pre-commit-config.yaml runs the black hook")
    return None


def choose_formatter(
    root: str | os.PathLike[str],
    *,
    override: str | None,
    python_file_count: int,
    ruff_unformatted: int | None,
) -> FormatterChoice:
    """The declared formatter, an override (``--formatter`` / ``[tool.pyagent] formatter``), or none.

    ``ruff_unformatted`` is how many files ``ruff format`` would change: a tree it already leaves
    unchanged almost everywhere is taken to be ruff-formatted.
    """
    if override is not None and override != "auto":
        if override not in FORMATTERS:
            raise ProjectConfigError(f"formatter must be one of {', '.join(FORMATTERS)}, not {override!r}")
        if override == "none":
            return FormatterChoice(None, "formatting turned off (formatter = none)")
        return FormatterChoice(override, f"formatter = {override} was asked for")
    declared = _declared_formatter(Path(root))
    if declared is not None:
        return declared
    if ruff_unformatted is not None and python_file_count >= IMPLICIT_MIN_FILES:
        share = 1 - ruff_unformatted / python_file_count
        if share >= IMPLICIT_FORMATTED_SHARE:
            return FormatterChoice(
                "ruff", f"no formatter declared, but ruff format already leaves {share:.0%} of the files unchanged"
            )
    return FormatterChoice(None, "no formatter declared: files are not reformatted")


@dataclass(frozen=True)
class PyAgentConfig:
    """``[tool.pyagent]`` in pyproject.toml: per-project defaults for ``improve`` (CLI flags win)."""

    test_cmd: str | None = None
    max_complexity: int | None = None
    exclude: tuple[str, ...] = ()
    agents: tuple[str, ...] | None = None  # None: all agents
    formatter: str | None = None
    allow_few_tests: bool | None = None
    origin: dict[str, str] = field(default_factory=dict)


_KEYS: dict[str, type] = {
    "test-cmd": str,
    "max-complexity": int,
    "exclude": list,
    "agents": list,
    "formatter": str,
    "allow-few-tests": bool,
}


def load_pyagent_config(root: str | os.PathLike[str]) -> PyAgentConfig:
    """Read ``[tool.pyagent]``; unknown keys and wrong types are errors, not silently ignored."""
    table = _pyproject(Path(root)).get("tool", {}).get("pyagent", {})
    if not isinstance(table, dict):
        raise ProjectConfigError("pyproject.toml [tool.pyagent] must be a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        kind = _KEYS.get(key.replace("_", "-"))
        if kind is None:
            raise ProjectConfigError(
                f"pyproject.toml [tool.pyagent] has an unknown key {key!r} (known: {', '.join(_KEYS)})"
            )
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProjectConfigError(f"pyproject.toml [tool.pyagent] {key} must be a {kind.__name__}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ProjectConfigError(f"pyproject.toml [tool.pyagent] {key} must be a list of strings")
        values[key.replace("_", "-")] = value
    if "formatter" in values and values["formatter"] not in FORMATTERS:
        raise ProjectConfigError(f"pyproject.toml [tool.pyagent] formatter must be one of {', '.join(FORMATTERS)}")
    if "max-complexity" in values and values["max-complexity"] < 1:
        raise ProjectConfigError("pyproject.toml [tool.pyagent] max-complexity must be at least 1")
    return PyAgentConfig(
        test_cmd=values.get("test-cmd"),
        max_complexity=values.get("max-complexity"),
        exclude=tuple(values.get("exclude", ())),
        agents=tuple(values["agents"]) if "agents" in values else None,
        formatter=values.get("formatter"),
        allow_few_tests=values.get("allow-few-tests"),
        origin={k: "pyproject.toml [tool.pyagent]" for k in values},
    )


def python_files(root: str | os.PathLike[str]) -> list[str]:
    """The project's Python files (``.gitignore`` honoured), POSIX and relative to ``root``."""
    from pyagent.pipeline.workspace import project_files

    return [p for p in project_files(Path(root)) if p.endswith((".py", ".pyi"))]
