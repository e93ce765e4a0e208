"""Driving black (for projects that declare it) through ``SecureShell``, like ``agents.ruff`` drives ruff.

black runs from the interpreter PyAgent runs in and reads the project's ``[tool.black]`` itself.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyagent.shell import SecureShell, ShellResult

__all__ = ["BlackError", "available", "format_files", "unformatted"]

_WOULD = re.compile(r"^would reformat (.+)$")


class BlackError(RuntimeError):
    """black is missing or failed."""


def available() -> bool:
    return importlib.util.find_spec("black") is not None


def _shell(shell: SecureShell | None) -> SecureShell:
    if shell is not None:
        return shell
    from pyagent.shell import SecureShell

    return SecureShell(env_allow=("PATH", "HOME", "LANG"), timeout=120.0)


async def _run(shell: SecureShell | None, args: Sequence[str], cwd: Path) -> ShellResult:
    if not available():
        raise BlackError("the project declares black, which is not installed here (pip install black)")
    res = await _shell(shell).run([sys.executable, "-m", "black", *args], cwd=str(cwd))
    if res.timed_out or res.exit_code is None or res.exit_code >= 2:
        raise BlackError(f"black failed (exit {res.exit_code}): {res.stderr.strip()[-500:]}")
    return res


async def format_files(cwd: Path, paths: Sequence[str], *, shell: SecureShell | None = None) -> ShellResult:
    return await _run(shell, ["--quiet", "--", *paths], cwd)


async def unformatted(
    cwd: str | os.PathLike[str], paths: Sequence[str] = (".",), *, shell: SecureShell | None = None
) -> list[str]:
    """Files black would change (POSIX, relative to ``cwd``)."""
    cwd = Path(cwd)
    res = await _run(shell, ["--check", "--", *paths], cwd)
    base = cwd.resolve()
    out: set[str] = set()
    for line in res.stderr.splitlines():
        m = _WOULD.match(line.strip())
        if m:
            p = Path(m.group(1))
            try:
                out.add((p if p.is_absolute() else cwd / p).resolve().relative_to(base).as_posix())
            except ValueError:
                out.add(p.as_posix())
    return sorted(out)
