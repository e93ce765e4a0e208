"""Driving the ``ruff`` binary (installed with PyPI's ruff wheel) through ``SecureShell``.

One place knows ruff's command lines and JSON output: the fix agents, the planner and the gate all
come through here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from pyagent.shell import SecureShell, ShellResult

__all__ = ["GATE_RULES", "Finding", "check", "format_files", "ruff_bin", "unformatted"]

# Rules the gate counts (a change may not increase them). E501 is left out: reformatting and longer
# names legitimately move line lengths around, and ``ruff format`` owns that concern.
GATE_RULES: tuple[str, ...] = ("E", "F", "W", "B", "UP", "SIM", "C4", "PIE", "RET", "I")
GATE_IGNORE: tuple[str, ...] = ("E501",)
RUFF_ENV_ALLOW: tuple[str, ...] = ("PATH", "HOME", "LANG")


class RuffError(RuntimeError):
    """ruff could not run or its output could not be read."""


@dataclass(frozen=True)
class Finding:
    """One ruff finding, with whether ruff can fix it safely."""

    path: str  # POSIX, relative to the directory ruff ran in
    code: str
    message: str
    line: int
    fix: str | None  # applicability: safe | unsafe | display-only | None (no fix)


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


async def check(
    cwd: str | os.PathLike[str],
    paths: Sequence[str] = (".",),
    *,
    select: Sequence[str] = GATE_RULES,
    ignore: Sequence[str] = GATE_IGNORE,
    shell: SecureShell | None = None,
) -> list[Finding]:
    """Findings of ``select`` rules on ``paths`` (relative to ``cwd``)."""
    cwd = Path(cwd)
    args = ["check", "--output-format=json", "--no-cache", "--exit-zero", f"--select={','.join(select)}"]
    if ignore:
        args.append(f"--ignore={','.join(ignore)}")
    res = await _run(shell, [*args, "--", *paths], cwd)
    try:
        raw: list[dict[str, Any]] = orjson.loads(res.stdout or "[]")
    except orjson.JSONDecodeError as exc:
        raise RuffError(f"unreadable ruff output: {exc}") from exc
    out: list[Finding] = []
    base = cwd.resolve()
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
        out.append(
            Finding(
                path=rel,
                code=str(code),
                message=str(item.get("message", "")),
                line=int((item.get("location") or {}).get("row", 0)),
                fix=(fix or {}).get("applicability") if fix else None,
            )
        )
    return out


async def fix(cwd: Path, paths: Sequence[str], rule: str, *, shell: SecureShell | None = None) -> ShellResult:
    """Apply ruff's SAFE fixes for one rule (or family) to ``paths``."""
    args = ["check", "--fix", "--no-unsafe-fixes", "--no-cache", "--exit-zero", "--quiet", f"--select={rule}"]
    return await _run(shell, [*args, "--", *paths], cwd)


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
