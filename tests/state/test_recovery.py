"""Crash recovery: a commit killed at any step is rolled back to the whole before-state."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyagent.state import StateTransaction, ensure_recovered, recover
from pyagent.state.errors import JournalCorruptError
from pyagent.state.journal import journal_path

N_FILES = 100

# A child that builds one 100-file transaction (modify, create, delete) and commits it. CRASH_AT, when
# set, makes it die (os._exit, no cleanup) right after that many renames (the commit renames with
# os.rename between directory handles, renameat(2)).
CHILD = r"""
import os, sys
from pyagent.state import StateTransaction
root, crash_at = sys.argv[1], int(sys.argv[2])
if crash_at >= 0:
    real_rename = os.rename
    count = [0]
    def rename(a, b, **kw):
        if count[0] == crash_at:
            os._exit(9)
        count[0] += 1
        real_rename(a, b, **kw)
    os.rename = rename
tx = StateTransaction(root)
for i in range(%(n)d):
    name = f"m{i:03d}.txt"
    if i %% 10 == 0:
        tx.delete(name)
    else:
        tx.write_bytes(name, tx.read_bytes(name).replace(b"before", b"after") * 2)
for i in range(5):
    tx.create(f"newdir/sub/c{i}.txt", b"created\n")
print("staged", flush=True)
tx.commit()
print("committed", flush=True)
""".replace("%(n)d", str(N_FILES)).replace("%%", "%")


def make_tree(root: Path) -> None:
    for i in range(N_FILES):
        (root / f"m{i:03d}.txt").write_bytes(f"file {i} before\n".encode() * (1 + i % 7))


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".pyagent" not in p.relative_to(root).parts
    } | {p.relative_to(root).as_posix() + "/": b"" for p in root.rglob("*") if p.is_dir() and p.name != ".pyagent"
         and ".pyagent" not in p.relative_to(root).parts}


def expected_after(root: Path, tmp: Path) -> dict[str, bytes]:
    after = tmp / "after"
    after.mkdir()
    make_tree(after)
    subprocess.run([sys.executable, "-c", CHILD, str(after), "-1"], check=True, capture_output=True)
    return snapshot(after)


# rename 0 puts the journal in place; renames 1.. replace tree files.
@pytest.mark.parametrize("crash_at", [0, 1, 2, 38, N_FILES - 10 + 4])
def test_commit_killed_after_k_renames_rolls_back(tmp_path: Path, crash_at: int) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    make_tree(root)
    before = snapshot(root)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), str(crash_at)], capture_output=True)
    assert proc.returncode == 9, proc.stderr
    if crash_at == 0:  # died while the journal was being put in place: the tree was never touched
        assert not os.path.exists(journal_path(str(root)))
        assert os.path.exists(journal_path(str(root)) + ".tmp")
        assert snapshot(root) == before
        assert recover(root) is None
    else:
        assert os.path.exists(journal_path(str(root)))  # the journal is hot
        assert snapshot(root) != before  # really half-applied
        result = recover(root)
        assert result is not None
        assert len(result.restored) + len(result.removed) == crash_at - 1
    assert snapshot(root) == before
    assert recover(root) is None  # idempotent, journal gone


def test_python_api_transaction_killed_at_random_is_never_mixed(tmp_path: Path) -> None:
    """20 SIGKILLs at random moments of a 100-file commit (the benchmark crash_replace.py does >= 50)."""
    rng = random.Random(1234)
    after = expected_after(tmp_path / "x", tmp_path)
    outcomes = {"before": 0, "after": 0}
    for trial in range(20):
        root = tmp_path / f"t{trial}"
        root.mkdir()
        make_tree(root)
        before = snapshot(root)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), "-1"], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"staged\n"  # kill during the commit itself
        time.sleep(rng.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ensure_recovered(root)
        state = snapshot(root)
        assert state in (before, after), f"trial {trial}: mixed state"
        outcomes["before" if state == before else "after"] += 1
    assert outcomes["before"] + outcomes["after"] == 20


def test_torn_journal_tmp_is_discarded_and_tree_untouched(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = snapshot(tmp_path)
    StateTransaction(tmp_path).abort()
    Path(journal_path(str(tmp_path)) + ".tmp").write_bytes(b"PYAGENT-JOURNAL\x01 torn")
    assert ensure_recovered(tmp_path) is None
    assert not os.path.exists(journal_path(str(tmp_path)) + ".tmp")
    assert snapshot(tmp_path) == before


def test_damaged_journal_is_reported_not_trusted(tmp_path: Path) -> None:
    make_tree(tmp_path)
    StateTransaction(tmp_path).abort()
    Path(journal_path(str(tmp_path))).write_bytes(b"PYAGENT-JOURNAL\x01" + b"\0" * 64)
    with pytest.raises(JournalCorruptError, match="checksum"):
        recover(tmp_path)
    with pytest.raises(JournalCorruptError):
        StateTransaction(tmp_path)
    assert os.path.exists(journal_path(str(tmp_path)))  # kept for a human to inspect


def test_next_transaction_recovers_automatically(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = snapshot(tmp_path)
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "20"], capture_output=True)
    tx = StateTransaction(tmp_path)
    assert tx.recovered is not None and len(tx.recovered.restored) == 19  # call 0 was the journal
    assert snapshot(tmp_path) == before
    tx.abort()


def test_recover_on_missing_path_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such directory"):
        recover(tmp_path / "missing")


def test_recovery_killed_half_way_is_finished_by_the_next_one(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = snapshot(tmp_path)
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "60"], capture_output=True)
    crash_recover = (
        "import os, sys\nfrom pyagent.state import recover\nreal = os.rename\ncalls = [0]\n"
        "def boom(a, b, **kw):\n    calls[0] += 1\n    if calls[0] == 7: os._exit(9)\n    real(a, b, **kw)\n"
        "os.rename = boom\nrecover(sys.argv[1])\n"
    )
    assert subprocess.run([sys.executable, "-c", crash_recover, str(tmp_path)]).returncode == 9
    assert os.path.exists(journal_path(str(tmp_path)))
    assert list(tmp_path.glob(".*.pyagent-restore.tmp"))  # the killed rollback left its temp files
    result = recover(tmp_path)
    assert result is not None
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.rglob("*.tmp"))
