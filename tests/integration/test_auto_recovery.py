"""Commands that work on a tree roll back a transaction that was killed before its commit point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pyagent.state.journal import journal_path

# A child that commits one transaction over every .py file of ROOT and dies (os._exit, no cleanup)
# after its third rename (the journal's, then two files'; renameat via os.rename): the tree is half-changed and a hot
# journal is left behind.
CHILD = r"""
import os, sys
from pathlib import Path
from pyagent.state import StateTransaction
root = sys.argv[1]
real_rename = os.rename
count = [0]
def rename(a, b, **kw):
    real_rename(a, b, **kw)
    count[0] += 1
    if count[0] == 3:
        os._exit(9)
tx = StateTransaction(root)
for p in sorted(Path(root).rglob("*.py")):
    rel = p.relative_to(root).as_posix()
    tx.write_text(rel, tx.read_text(rel).replace("return", "return  # changed"))
os.rename = rename
tx.commit()
"""


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".pyagent" not in p.parts
    }


def _half_committed(root: Path) -> dict[str, bytes]:
    for i in range(4):
        (root / f"m{i}.py").write_text(f"def f{i}(x):\n    if x:\n        return {i}\n    return -1\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_m.py").write_text("import unittest\n\nclass T(unittest.TestCase):\n    def test_ok(self):\n        return None\n")
    before = _tree(root)
    crash = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True, text=True)
    assert crash.returncode == 9, crash.stderr
    assert os.path.exists(journal_path(str(root))), "the child should have left a hot journal"
    assert _tree(root) != before, "the child should have changed a file before dying"
    return before


def test_audit_rolls_back_a_hot_journal_first(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    before = _half_committed(tmp_path)
    out = subprocess.run([*pyagent_cmd, "audit", str(tmp_path), "--format", "json"], capture_output=True, text=True, env=clean_env)
    assert out.returncode == 0, out.stderr
    assert _tree(tmp_path) == before
    assert not os.path.exists(journal_path(str(tmp_path)))
    # the audit measured the restored files, not the half-changed ones
    report = json.loads(out.stdout)
    assert {f["path"] for f in report["files"]} >= {"m0.py", "m3.py"}


def test_improve_rolls_back_a_hot_journal_first(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    before = _half_committed(tmp_path)
    out = subprocess.run(
        # the tree holds one test: enough for this check, which is about the journal, not the gate
        [*pyagent_cmd, "improve", str(tmp_path), "--dry-run", "--no-git", "--no-memory", "--max-tasks", "1",
         "--allow-few-tests"],
        capture_output=True,
        text=True,
        env=clean_env,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert not os.path.exists(journal_path(str(tmp_path)))
    assert _tree(tmp_path) == before  # rolled back, and --dry-run changed nothing afterwards
    reports = list((tmp_path / ".pyagent" / "reports").glob("*/report.json"))
    assert len(reports) == 1
    notes = json.loads(reports[0].read_text())["notes"]
    assert any("rolled back interrupted transaction" in n for n in notes), notes
