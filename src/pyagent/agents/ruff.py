"""Driving the ``ruff`` binary (installed with PyPI's ruff wheel) through ``SecureShell``.

One place knows ruff's command lines and JSON output: the fix agents, the planner and the gate all
come through here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from pyagent.shell import SecureShell, ShellResult

__all__ = ["Finding", "LintRules", "check", "format_files", "known_rule", "ruff_bin", "unformatted"]

RUFF_ENV_ALLOW: tuple[str, ...] = ("PATH", "HOME", "LANG")


class RuffError(RuntimeError):
    """ruff could not run or its output could not be read."""


@dataclass(frozen=True)
class LintRules:
    """The rules that count for one project, as ``ruff check`` arguments.

    Empty ``args``: ruff reads the project's own configuration (pyproject.toml, ruff.toml), which is
    what its maintainers run. Otherwise the arguments carry settings mapped from another linter's
    config or the documented default (``pyagent.improve.project_config``). Never a ``--select`` on top
    of a project's configuration: that would lint by rules the project did not choose.
    """

    args: tuple[str, ...] = ()
    origin: str = "the project's ruff configuration"


@dataclass(frozen=True)
class Finding:
    """One ruff finding, with whether ruff can fix it safely."""

    path: str  # POSIX, relative to the directory ruff ran in
    code: str
    message: str
    line: int
    fix: str | None  # applicability: safe | unsafe | display-only | None (no fix)
    content: str = ""  # the flagged source text: with code and message, what identifies the finding
    end_line: int = 0  # last line of the flagged span
    edits: tuple[tuple[int, int, int, int, str], ...] = ()  # ruff's fix: (row, col, end row, end col, text)

    def key(self) -> tuple[str, str, str, str]:
        """Identity across edits: a finding that only moved to another line is the same finding."""
        return (self.path, self.code, self.message, self.content)


def ruff_bin() -> str:
    from ruff.__main__ import find_ruff_bin  # type: ignore[import-untyped]

    return os.fsdecode(find_ruff_bin())


def _shell(shell: SecureShell | None) -> SecureShell:
    if shell is not None:
        return shell
    from pyagent.shell import SecureShell

    return SecureShell(env_allow=RUFF_ENV_ALLOW, timeout=120.0)


async def _run(shell: SecureShell | None, args: Sequence[str], cwd: Path) -> ShellResult:
    res = await _shell(shell).run([ruff_bin(), *args], cwd=str(cwd))
    if res.timed_out or res.exit_code is None or res.exit_code >= 2:
        raise RuffError(
            f"ruff {' '.join(args[:2])} failed (exit {res.exit_code}): {res.stderr.strip()[-500:]}"
        )
    return res


def _flagged_text(lines: list[str], item: dict[str, Any]) -> str:
    """The source text a finding points at (its span, or its whole line when the span is empty)."""
    start, end = item.get("location") or {}, item.get("end_location") or {}
    r0, c0 = int(start.get("row", 0) or 0), int(start.get("column", 1) or 1)
    r1, c1 = int(end.get("row", r0) or r0), int(end.get("column", c0) or c0)
    if not 1 <= r0 <= len(lines):
        return ""
    if r1 == r0:
        text = lines[r0 - 1][c0 - 1 : c1 - 1]
    else:
        text = "\n".join([lines[r0 - 1][c0 - 1 :], *lines[r0 : r1 - 1], lines[min(r1, len(lines)) - 1][: c1 - 1]])
    return " ".join(text.split()) or lines[r0 - 1].strip()


def _edits(fix: dict[str, Any] | None) -> tuple[tuple[int, int, int, int, str], ...]:
    out = []
    for e in (fix or {}).get("edits") or ():
        start, end = e.get("location") or {}, e.get("end_location") or {}
        out.append((int(start["row"]), int(start["column"]), int(end["row"]), int(end["column"]), str(e.get("content") or "")))
    return tuple(out)


def apply_fixes(path: Path, findings: Sequence[Finding]) -> int:
    """Apply the (safe) fixes of exactly these findings to ``path``; overlapping edits are skipped.

    Used for a fix's knock-on findings (an import a modernisation left unused), so nothing else in
    the file is touched. Returns how many findings were fixed.
    """
    text = path.read_text(encoding="utf-8")
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def offset(row: int, col: int) -> int:
        return starts[min(row, len(starts)) - 1] + col - 1 if row <= len(starts) else len(text)

    spans: list[tuple[int, int, str]] = []
    fixed = 0
    for f in findings:
        if f.fix != "safe" or not f.edits:
            continue
        mine = [(offset(r0, c0), offset(r1, c1), new) for r0, c0, r1, c1, new in f.edits]
        if any(a < e and s < b for a, b, _ in mine for s, e, _ in spans):
            continue
        spans.extend(mine)
        fixed += 1
    for start, end, new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    if fixed:
        path.write_text(text, encoding="utf-8")
    return fixed


async def check(
    cwd: str | os.PathLike[str],
    paths: Sequence[str] = (".",),
    *,
    rules: LintRules | None = None,
    shell: SecureShell | None = None,
) -> list[Finding]:
    """Findings on ``paths`` (relative to ``cwd``) under ``rules``; the project's exclusions apply."""
    cwd = Path(cwd)
    args = ["check", "--output-format=json", "--no-cache", "--exit-zero", "--force-exclude"]
    res = await _run(shell, [*args, *(rules or LintRules()).args, "--", *paths], cwd)
    try:
        raw: list[dict[str, Any]] = orjson.loads(res.stdout or "[]")
    except orjson.JSONDecodeError as exc:
        raise RuffError(f"unreadable ruff output: {exc}") from exc
    out: list[Finding] = []
    base = cwd.resolve()
    sources: dict[Path, list[str]] = {}
    for item in raw:
        code = item.get("code")
        if not code:  # syntax errors come without a rule code
            code = "syntax-error"
        fname = Path(item.get("filename", ""))
        try:
            rel = fname.resolve().relative_to(base).as_posix()
        except ValueError:
            rel = fname.as_posix()
        fix = item.get("fix")
        if fname not in sources:
            try:
                sources[fname] = (cwd / fname).read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                sources[fname] = []
        out.append(
            Finding(
                path=rel,
                code=str(code),
                message=str(item.get("message", "")),
                line=int((item.get("location") or {}).get("row", 0)),
                fix=(fix or {}).get("applicability") if fix else None,
                content=_flagged_text(sources[fname], item),
                end_line=int((item.get("end_location") or {}).get("row", 0) or 0),
                edits=_edits(fix),
            )
        )
    return out


async def fix(
    cwd: Path,
    paths: Sequence[str],
    rule: str,
    *,
    rules: LintRules | None = None,
    shell: SecureShell | None = None,
) -> ShellResult:
    """Apply ruff's SAFE fixes of one rule to ``paths``, under the project's rules.

    ``--fixable`` narrows what is fixed to ``rule`` while the selection stays the project's; the
    planner only asks for rules whose findings the project's config marks fixable.
    """
    args = ["check", "--fix", "--no-unsafe-fixes", "--no-cache", "--exit-zero", "--quiet", "--force-exclude"]
    return await _run(shell, [*args, *(rules or LintRules()).args, f"--fixable={rule}", "--", *paths], cwd)


@functools.cache
def _all_rule_codes() -> frozenset[str]:
    import subprocess

    out = subprocess.run(
        [ruff_bin(), "rule", "--all", "--output-format=json"], capture_output=True, check=True, timeout=60
    ).stdout
    return frozenset(str(r["code"]) for r in orjson.loads(out))


def known_rule(selector: str) -> bool:
    """Whether ruff has a rule this selector (a code or a code prefix such as ``E1``) selects."""
    codes = _all_rule_codes()
    return selector == "ALL" or any(c.startswith(selector) for c in codes)


async def format_files(cwd: Path, paths: Sequence[str], *, shell: SecureShell | None = None) -> ShellResult:
    return await _run(shell, ["format", "--no-cache", "--quiet", "--", *paths], cwd)


async def unformatted(
    cwd: str | os.PathLike[str], paths: Sequence[str] = (".",), *, shell: SecureShell | None = None
) -> list[str]:
    """Files ``ruff format`` would change (POSIX, relative to ``cwd``)."""
    cwd = Path(cwd)
    argv = [ruff_bin(), "format", "--check", "--no-cache", "--output-format=json", "--", *paths]
    res = await _shell(shell).run(argv, cwd=str(cwd))
    if res.timed_out or res.exit_code is None or res.exit_code >= 2:
        raise RuffError(f"ruff format --check failed: {res.stderr.strip()[-500:]}")
    try:
        raw: list[dict[str, Any]] = orjson.loads(res.stdout or "[]")
    except orjson.JSONDecodeError as exc:
        raise RuffError(f"unreadable ruff format output: {exc}") from exc
    base = cwd.resolve()
    out: set[str] = set()
    for item in raw:
        fname = Path(item.get("filename", ""))
        try:
            out.add(fname.resolve().relative_to(base).as_posix())
        except ValueError:
            out.add(fname.as_posix())
    return sorted(out)
