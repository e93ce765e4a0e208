"""`pyagent improve` remembers across processes: a change that failed on a file is skipped next run.

Two real `pyagent improve` subprocesses on a tiny real project (real ruff, real unittest runs), with
the knowledge store in PATH/.pyagent/memory.db between them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.improve_helpers import UNITTEST_CMD, make_project

MOD = "pkg/mod.py"
# Only one change applies: removing the "unused" import, which breaks the plugin registration.
ONLY_THE_TRAP = "import pkg.plugins\n\n\ndef total(items):\n    return sum(items)\n\n\ndef name(x):\n    return str(x)\n"


def _improve(cmd: list[str], root: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, "improve", str(root), "--no-git", "--test-cmd", UNITTEST_CMD, *extra],
                          capture_output=True, text=True, env=env, timeout=300)


def _latest_report(root: Path) -> dict[str, object]:
    reports = sorted((root / ".pyagent" / "reports").iterdir(), key=lambda p: p.stat().st_mtime)
    data: dict[str, object] = json.loads((reports[-1] / "report.json").read_text())
    return data


def test_second_run_skips_the_change_that_failed(tmp_path: Path, pyagent_cmd: list[str],
                                                 clean_env: dict[str, str]) -> None:
    root = make_project(tmp_path / "p")
    (root / MOD).write_text(ONLY_THE_TRAP)
    first = _improve(pyagent_cmd, root, clean_env)
    assert first.returncode == 0, first.stdout + first.stderr
    tasks = _latest_report(root)["tasks"]
    assert [(t["action"], t["status"]) for t in tasks if t["target"] == MOD] == [  # type: ignore[index, union-attr]
        ("lint:F401", "rolled_back")]
    assert (root / ".pyagent" / "memory.db").is_file()

    failures = subprocess.run([*pyagent_cmd, "memory", "query", "pyagent.failures", "--store", str(root), "--json"],
                              capture_output=True, text=True, env=clean_env, timeout=60)
    [fact] = json.loads(failures.stdout)
    assert fact["value"]["action"] == "lint:F401" and fact["value"]["target"] == MOD
    assert "test_plugin_registered" in fact["value"]["reason"]

    second = _improve(pyagent_cmd, root, clean_env)
    assert second.returncode == 0, second.stdout + second.stderr
    report = _latest_report(root)
    assert not [t for t in report["tasks"] if t["target"] == MOD]  # type: ignore[union-attr, index]
    skipped = report["skipped_by_memory"]
    assert [(s["action"], s["target"]) for s in skipped] == [("lint:F401", MOD)]  # type: ignore[union-attr, index]
    assert "known to fail (memory)" in second.stdout
    assert (root / MOD).read_text() == ONLY_THE_TRAP
