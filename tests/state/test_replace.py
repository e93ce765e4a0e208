"""Bulk replace through the Python API: Rust matching, walk rules, skips, errors, one transaction."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyagent.state import ConflictError
from pyagent.state.replace import apply_replace, plan_replace


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("def old_name(x):\n    return old_name(x - 1)\n")
    (tmp_path / "src" / "b.txt").write_text("old_name here\nand here: old_name\n")
    (tmp_path / "src" / "clean.py").write_text("nothing to see\n")
    (tmp_path / "blob.bin").write_bytes(b"old_name\x00\x01\x02")
    (tmp_path / "latin1.py").write_bytes("# caf\xe9 old_name\n".encode("latin-1"))
    (tmp_path / ".hidden.py").write_text("old_name\n")
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "x.py").write_text("old_name\n")
    (tmp_path / ".gitignore").write_text("ignored/\n")
    return tmp_path


def test_plan_counts_and_changes_nothing(tree: Path) -> None:
    before = (tree / "src" / "a.py").read_bytes()
    plan = plan_replace(tree, r"old_(\w+)", "new_$1", diff=True)
    assert sorted(c.path for c in plan.changes) == ["src/a.py", "src/b.txt"]
    assert plan.matches == 4 and plan.files == 2
    assert plan.binary == ("blob.bin",)
    assert plan.non_utf8 == ("latin1.py",)
    assert plan.errors == ()
    a = next(c for c in plan.changes if c.path == "src/a.py")
    assert a.new == b"def new_name(x):\n    return new_name(x - 1)\n"
    assert a.diff is not None and "-def old_name(x):" in a.diff and "+def new_name(x):" in a.diff
    assert a.diff.startswith("--- a/src/a.py\n+++ b/src/a.py\n")
    assert (tree / "src" / "a.py").read_bytes() == before


def test_apply_is_one_transaction(tree: Path) -> None:
    plan = plan_replace(tree, "old_name", "fresh", literal=True)
    result = apply_replace(plan)
    assert result.changed == ("src/a.py", "src/b.txt")
    assert (tree / "src" / "b.txt").read_text() == "fresh here\nand here: fresh\n"
    assert (tree / "blob.bin").read_bytes() == b"old_name\x00\x01\x02"
    assert (tree / "latin1.py").read_bytes() == "# caf\xe9 old_name\n".encode("latin-1")
    assert (tree / ".hidden.py").read_text() == "old_name\n"
    assert (tree / "ignored" / "x.py").read_text() == "old_name\n"


def test_hidden_and_globs(tree: Path) -> None:
    assert ".hidden.py" in {c.path for c in plan_replace(tree, "old_name", "n", hidden=True).changes}
    only_py = plan_replace(tree, "old_name", "n", globs=["src/*.py"])
    assert [c.path for c in only_py.changes] == ["src/a.py"]
    two = plan_replace(tree, "old_name", "n", globs=["src/*.py", "*.txt"])
    assert [c.path for c in two.changes] == ["src/a.py", "src/b.txt"]
    not_txt = plan_replace(tree, "old_name", "n", globs=["!*.txt"])
    assert [c.path for c in not_txt.changes] == ["src/a.py"]
    with pytest.raises(ValueError, match="glob"):
        plan_replace(tree, "x", "y", globs=["a{"])


def _replaced(tmp_path: Path, text: str, pattern: str, replacement: str, **kw: bool) -> tuple[str, int]:
    """One file through the product path: (its new text, matches), or (text, 0) when nothing changes."""
    target = tmp_path / "one.txt"
    target.write_bytes(text.encode())
    plan = plan_replace(target, pattern, replacement, **kw)
    return (plan.changes[0].new.decode(), plan.changes[0].matches) if plan.changes else (text, 0)


def test_literal_and_captures_and_named_groups(tmp_path: Path) -> None:
    assert _replaced(tmp_path, "f(a, b)", r"f\((\w+), (\w+)\)", "f($2, $1)") == ("f(b, a)", 1)
    assert _replaced(tmp_path, "k=v", r"(?P<key>\w+)=(?P<val>\w+)", "${val}=${key}") == ("v=k", 1)
    assert _replaced(tmp_path, "a.b $1", "a.b $1", "${x}", literal=True) == ("${x}", 1)
    assert _replaced(tmp_path, "axb", "a.b", "z", literal=True) == ("axb", 0)


def test_multiline_only_when_asked(tmp_path: Path) -> None:
    text = "start\nmiddle\nend\n"
    assert _replaced(tmp_path, text, r"start.*end", "X") == (text, 0)
    assert _replaced(tmp_path, text, r"start.*end", "X", multiline=True) == ("X\n", 1)
    assert _replaced(tmp_path, text, r"^m\w+$", "M") == ("start\nM\nend\n", 1)


def test_line_anchors_work_on_crlf_files(tmp_path: Path) -> None:
    assert _replaced(tmp_path, "a = 1\r\nb = 2\r\n", r"^(\w) = (\d)$", "$1: $2") == ("a: 1\r\nb: 2\r\n", 2)


def test_invalid_regex_is_a_clear_value_error(tree: Path) -> None:
    with pytest.raises(ValueError, match=r"(?s)invalid regex .*unclosed group"):
        plan_replace(tree, "(unclosed", "x")
    with pytest.raises(ValueError, match="empty"):
        plan_replace(tree, "", "x")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        plan_replace(tmp_path / "nope", "a", "b")


def test_single_file_target(tree: Path) -> None:
    plan = plan_replace(tree / "src" / "b.txt", "here", "there")
    assert plan.root == str(tree / "src")  # no .git/.pyagent above: the file's directory is the workspace
    assert [c.path for c in plan.changes] == ["b.txt"]
    apply_replace(plan)
    assert (tree / "src" / "b.txt").read_text() == "old_name there\nand there: old_name\n"


def test_file_edited_after_the_plan_conflicts(tree: Path) -> None:
    plan = plan_replace(tree, "old_name", "new_name")
    (tree / "src" / "b.txt").write_text("user typed this old_name\n")
    with pytest.raises(ConflictError, match=r"src/b\.txt"):
        apply_replace(plan)
    assert (tree / "src" / "a.py").read_text().count("old_name") == 2  # nothing applied


def test_diff_is_a_unified_diff_relative_to_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("a\nb\nc\n")
    (change,) = plan_replace(tmp_path, "^b$", "B", diff=True).changes
    assert change.diff == "--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
    assert plan_replace(tmp_path, "^b$", "B").changes[0].diff is None


def test_git_repo_status_shows_only_the_replaced_files(tree: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tree, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=tree, check=True)
    apply_replace(plan_replace(tree / "src", "old_name", "new_name"))
    status = subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True).stdout
    assert sorted(line[3:] for line in status.splitlines()) == ["src/a.py", "src/b.txt"]


def test_an_unreadable_file_comes_back_as_a_typed_entry_relative_to_the_root(tree: Path) -> None:
    """A file the walk cannot read is an ``UnreadablePath`` (path relative to the plan's root, the OS
    reason); the rest of the tree is still planned."""
    locked = tree / "src" / "locked.py"
    locked.write_text("old_name\n")
    locked.chmod(0)
    code = (
        "import sys\nfrom pyagent.state.replace import plan_replace\n"
        "plan = plan_replace(sys.argv[1], 'old_name', 'new_name')\n"
        "print([(type(e).__name__, e.path) for e in plan.errors], plan.files)\n"
        "print(plan.errors[0].reason)\n"
    )
    cmd = [sys.executable, "-c", code, str(tree)]
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that bypass file permissions
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    finally:
        locked.chmod(0o644)
    entries, reason = out.stdout.splitlines()
    assert entries == "[('UnreadablePath', 'src/locked.py')] 2", out.stderr
    assert "ermission denied" in reason
