"""Shared pieces of the attack tests: run attacker code the way agents run project code."""

from __future__ import annotations

import sys
from pathlib import Path

from pyagent.shell import Confinement, SecureShell, ShellResult


def attack(code: str, cwd: Path, *, confine: Confinement | None = None, timeout: float = 30.0,
           env: dict[str, str] | None = None) -> ShellResult:
    """Runs ``code`` in a fresh interpreter through SecureShell (confined by default), in ``cwd``."""
    shell = SecureShell(timeout=timeout, confine=confine)
    return shell.run_sync([sys.executable, "-c", code], cwd=cwd, env=env)


def active(result: ShellResult, name: str) -> bool:
    """Whether the protection ``name`` was reported active for the run (the tests name what stops them)."""
    rows = {p.name: p for p in result.protections}
    assert name in rows, f"{name!r} is not a protection the shell reports: {sorted(rows)}"
    return rows[name].active
