"""The package layering in pyproject's ``[tool.importlinter]`` is enforced, not just written down.

``lint-imports`` runs on a copy of the source tree: the untouched copy passes, and a copy with one
forbidden import added fails, naming the contract that import breaks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _copy(dest: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(
        ROOT / "src" / "pyagent", dest / "src" / "pyagent", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    return dest


def _lint(project: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(project / "src")}  # the copy shadows the installed package
    return subprocess.run(
        [str(LINT), "--no-cache", "--no-logo", "pyproject.toml"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def _add_import(project: Path, module: str, line: str) -> None:
    path = project / "src" / Path(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    proc = _lint(_copy(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout and "BROKEN" not in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # the bottom layer reaching up into the agents
        ("pyagent.model.task", "import pyagent.agents.registry", "layers:"),
        # the server knowing an agent
        ("pyagent.server.app", "import pyagent.agents.registry", "the engine and the server never import"),
        # one safe-hands package using another
        ("pyagent.shell.output", "import pyagent.state.fsutil", "health, state and shell do not import one another"),
        # a safe-hands package reaching up into the scheduler
        ("pyagent.state.journal", "import pyagent.fleet.events", "health, state and shell import only"),
        # a cycle inside a package: the report's result types importing the report
        ("pyagent.improve.result", "import pyagent.improve.report", "no import cycles"),
    ],
)
def test_a_forbidden_import_fails_the_check(tmp_path: Path, module: str, line: str, broken: str) -> None:
    project = _copy(tmp_path)
    _add_import(project, module, line)
    proc = _lint(project)
    assert proc.returncode != 0
    failed = [row for row in proc.stdout.splitlines() if " BROKEN" in row]
    assert any(row.startswith(broken) for row in failed), proc.stdout
