"""StateTransaction: staging, read-your-writes, atomic commit, conflicts, lock, failures roll back."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pyagent.state import ConflictError, LockedError, StateTransaction, TransactionError
from pyagent.state.journal import journal_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".pyagent" not in p.relative_to(root).parts
    }


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "a.py").write_text("a = 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "b.py").write_text("b = 2\n")
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(tmp_path / "run.sh", 0o750)
    return tmp_path


def test_changes_are_staged_until_commit_and_reads_see_them(tree: Path) -> None:
    tx = StateTransaction(tree)
    tx.write_text("a.py", "a = 10\n")
    tx.create("pkg/new/c.py", b"c = 3\n")
    tx.delete("pkg/b.py")
    assert tx.read_text("a.py") == "a = 10\n"
    assert tx.read_bytes("pkg/new/c.py") == b"c = 3\n"
    assert not tx.exists("pkg/b.py")
    with pytest.raises(FileNotFoundError):
        tx.read_bytes("pkg/b.py")
    assert (tree / "a.py").read_text() == "a = 1\n"
    assert (tree / "pkg" / "b.py").exists()
    assert not (tree / "pkg" / "new").exists()
    result = tx.commit()
    assert result.changed == ("a.py",)
    assert result.created == ("pkg/new/c.py",)
    assert result.deleted == ("pkg/b.py",)
    assert snapshot(tree) == {"a.py": b"a = 10\n", "pkg/new/c.py": b"c = 3\n", "run.sh": b"#!/bin/sh\necho hi\n"}
    assert not os.path.exists(journal_path(str(tree)))
    assert result.fsync_seconds > 0


def test_mode_bits_are_kept_and_rename_carries_them(tree: Path) -> None:
    with StateTransaction(tree) as tx:
        tx.write_text("run.sh", "#!/bin/sh\necho bye\n")
    assert stat.S_IMODE(os.stat(tree / "run.sh").st_mode) == 0o750
    with StateTransaction(tree) as tx:
        tx.rename("run.sh", "bin/run2.sh")
    assert not (tree / "run.sh").exists()
    assert (tree / "bin" / "run2.sh").read_text() == "#!/bin/sh\necho bye\n"
    assert stat.S_IMODE(os.stat(tree / "bin" / "run2.sh").st_mode) == 0o750


def test_exception_in_context_leaves_tree_untouched(tree: Path) -> None:
    before = snapshot(tree)
    with pytest.raises(RuntimeError), StateTransaction(tree) as tx:
        tx.write_text("a.py", "broken")
        raise RuntimeError("agent failed")
    assert snapshot(tree) == before
    with StateTransaction(tree, lock_timeout=0.1) as tx:  # the lock was released
        assert tx.read_text("a.py") == "a = 1\n"


def test_conflict_names_the_file_and_writes_nothing(tree: Path) -> None:
    tx = StateTransaction(tree)
    tx.write_text("a.py", tx.read_text("a.py") + "x = 1\n")
    tx.write_text("pkg/b.py", "b = 3\n")
    (tree / "pkg" / "b.py").write_text("b = 'edited by the user'\n")
    before = snapshot(tree)
    with pytest.raises(ConflictError) as info:
        tx.commit()
    assert info.value.path == "pkg/b.py"
    assert "pkg/b.py" in str(info.value)
    assert snapshot(tree) == before


def test_base_hash_from_elsewhere_is_checked(tree: Path) -> None:
    from pyagent.state.transaction import hash_bytes

    stale = hash_bytes(b"a = 0\n")
    tx = StateTransaction(tree)
    tx.write_bytes("a.py", b"a = 2\n", base_hash=stale)
    with pytest.raises(ConflictError):
        tx.commit()
    tx = StateTransaction(tree)
    tx.write_bytes("a.py", b"a = 2\n", base_hash=hash_bytes(b"a = 1\n"))
    assert tx.commit().changed == ("a.py",)


def test_create_conflicts_when_someone_else_created_the_file(tree: Path) -> None:
    tx = StateTransaction(tree)
    tx.create("late.py", b"mine\n")
    (tree / "late.py").write_text("theirs\n")
    with pytest.raises(ConflictError, match=r"late\.py"):
        tx.commit()
    assert (tree / "late.py").read_text() == "theirs\n"


def test_lock_keeps_a_second_transaction_off_the_tree(tree: Path) -> None:
    first = StateTransaction(tree)
    with pytest.raises(LockedError, match=str(os.getpid())):
        StateTransaction(tree, lock_timeout=0.2)
    # another process is kept off too
    code = (
        "import sys; from pyagent.state import StateTransaction, LockedError\n"
        "try:\n    StateTransaction(sys.argv[1], lock_timeout=0.2)\nexcept LockedError:\n    sys.exit(3)\n"
    )
    assert subprocess.run([sys.executable, "-c", code, str(tree)]).returncode == 3
    first.abort()
    StateTransaction(tree, lock_timeout=0.2).abort()


def test_bad_paths_are_refused(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (tree / "link").symlink_to(outside)
    (tree / "filelink.py").symlink_to(tree / "a.py")
    tx = StateTransaction(tree)
    with pytest.raises(ValueError, match="outside"):
        tx.write_text("../escape.py", "x")
    with pytest.raises(TransactionError, match="symlink"):
        tx.write_text("link/escape.py", "x")
    with pytest.raises(ValueError, match=r"\.pyagent"):
        tx.write_text(".pyagent/lock", "x")
    with pytest.raises(TransactionError, match="symlink"):
        tx.write_text("filelink.py", "x")
    with pytest.raises(FileExistsError):
        tx.create("a.py", b"x")
    with pytest.raises(FileNotFoundError):
        tx.delete("missing.py")
    with pytest.raises(IsADirectoryError):
        tx.read_bytes("pkg")
    tx.abort()
    with pytest.raises(TransactionError, match="already"):
        tx.write_text("a.py", "x")
    with pytest.raises(FileNotFoundError):
        StateTransaction(tree / "nope")


def test_permission_denied_mid_commit_rolls_back(tree: Path) -> None:
    """A read-only directory makes the commit fail half-way; it must roll back and say so."""
    code = (
        "import sys\nfrom pyagent.state import StateTransaction, TransactionError\n"
        "tx = StateTransaction(sys.argv[1])\n"
        "tx.write_text('a.py', 'a = 99\\n')\ntx.write_text('pkg/b.py', 'b = 99\\n')\n"
        "try:\n    tx.commit()\nexcept TransactionError as e:\n    print(e); sys.exit(3)\n"
    )
    cmd = [sys.executable, "-c", code, str(tree)]
    if os.geteuid() == 0:  # root writes anywhere: drop the capabilities that bypass file permissions
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    before = snapshot(tree)
    os.chmod(tree / "pkg", 0o555)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(tree / "pkg", 0o755)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "rolled back" in out.stdout and "ermission denied" in out.stdout
    assert snapshot(tree) == before
    assert not os.path.exists(journal_path(str(tree)))
    assert not [p for p in tree.rglob("*.tmp") if ".pyagent" not in p.parts]


def test_vault_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    code = "import sys\nfrom pyagent.state import StateTransaction\nStateTransaction(sys.argv[1])\n"
    cmd = [sys.executable, "-c", code, str(tmp_path)]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    os.chmod(tmp_path, 0o555)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(tmp_path, 0o755)
    assert out.returncode == 1
    assert "TransactionError: cannot create PyAgent's vault" in out.stderr
    assert not (tmp_path / ".pyagent").exists()


def test_unreadable_file_is_a_clear_error(tree: Path) -> None:
    (tree / "dir_not_file").mkdir()
    tx = StateTransaction(tree)
    with pytest.raises(IsADirectoryError, match="dir_not_file"):
        tx.write_text("dir_not_file", "x")
    tx.abort()


def test_git_status_never_shows_the_vault(tree: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    with StateTransaction(tree) as tx:
        tx.write_text("a.py", "a = 5\n")
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tree,
                         capture_output=True, text=True, check=True).stdout
    assert ".pyagent" not in out
    assert "a.py" in out
    exclude = (tree / ".git" / "info" / "exclude").read_text()
    with StateTransaction(tree) as tx:  # a second transaction does not add the line twice
        tx.write_text("a.py", "a = 6\n")
    assert (tree / ".git" / "info" / "exclude").read_text() == exclude


def test_noop_commit_touches_nothing(tree: Path) -> None:
    mtime = os.stat(tree / "a.py").st_mtime_ns
    tx = StateTransaction(tree)
    tx.write_text("a.py", "a = 1\n")
    result = tx.commit()
    assert result.paths == ()
    assert os.stat(tree / "a.py").st_mtime_ns == mtime
