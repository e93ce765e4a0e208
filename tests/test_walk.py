"""The one tree walk shared by audit, replace and the agents (``pyagent._rust.walk``)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyagent import _rust


def _rel(root: Path, files: list[str]) -> list[str]:
    return [Path(f).relative_to(root).as_posix() for f in files]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in ["a.py", "b.txt", "pkg/c.py", ".hidden/d.py", ".e.py", "build/f.py", ".git/g.py", ".pyagent/h.py"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("build/\n")
    return tmp_path


def test_gitignore_hidden_and_internal_dirs(tree: Path) -> None:
    walked = _rust.walk(str(tree), extensions=["py"])
    assert _rel(tree, walked.files) == ["a.py", "pkg/c.py"]
    assert walked.errors == []


def test_hidden_flag_lets_hidden_in_but_never_git_or_pyagent(tree: Path) -> None:
    files = _rust.walk(str(tree), extensions=["py"], hidden=True).files
    assert _rel(tree, files) == [".e.py", ".hidden/d.py", "a.py", "pkg/c.py"]


def test_whitelist_glob_does_not_pull_in_hidden_files(tree: Path) -> None:
    files = _rust.walk(str(tree), globs=["*.py"]).files
    assert _rel(tree, files) == ["a.py", "pkg/c.py"]
    files = _rust.walk(str(tree), globs=["*.py"], hidden=True).files
    assert _rel(tree, files) == [".e.py", ".hidden/d.py", "a.py", "pkg/c.py"]


def test_excludes_and_no_ignore(tree: Path) -> None:
    files = _rust.walk(str(tree), extensions=["py"], excludes=["pkg/"]).files
    assert _rel(tree, files) == ["a.py"]
    files = _rust.walk(str(tree), extensions=["py"], no_ignore=True).files
    assert _rel(tree, files) == ["a.py", "build/f.py", "pkg/c.py"]


def test_file_root_and_missing_root(tree: Path) -> None:
    files = _rust.walk(str(tree / "b.txt"), extensions=["py"]).files
    assert files == [str(tree / "b.txt")]
    with pytest.raises(FileNotFoundError, match="No such file or directory") as missing:
        _rust.walk(str(tree / "nope"))
    assert (missing.value.errno, missing.value.filename) == (errno.ENOENT, str(tree / "nope"))
    with pytest.raises(NotADirectoryError) as inside_a_file:
        _rust.walk(str(tree / "a.py" / "x"))
    assert inside_a_file.value.errno == errno.ENOTDIR


def test_unreadable_root_is_a_permission_error(tree: Path) -> None:
    """The root that cannot be listed raises PermissionError, not FileNotFoundError or an empty walk."""
    locked = tree / "pkg"
    locked.chmod(0)
    try:
        code = (
            "import sys\nfrom pyagent import _rust\n"
            "try:\n    _rust.walk(sys.argv[1])\nexcept PermissionError as e:\n    print('PermissionError', e.errno)\n"
        )
        cmd = [sys.executable, "-c", code, str(locked)]
        if os.geteuid() == 0:  # root reads anything: drop the capabilities that bypass file permissions
            cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["PermissionError", str(errno.EACCES)], out.stderr
    finally:
        locked.chmod(0o755)


def test_an_unreadable_directory_is_reported_by_name_and_reason(tree: Path) -> None:
    """A subdirectory that cannot be listed does not stop the walk: it comes back as an Unreadable entry."""
    locked = tree / "pkg"
    locked.chmod(0)
    try:
        code = (
            "import sys\nfrom pyagent import _rust\n"
            "r = _rust.walk(sys.argv[1], extensions=['py'])\n"
            "print([type(e).__name__ for e in r.errors], [e.path for e in r.errors], len(r.files))\n"
            "print(r.errors[0].reason)\n"
        )
        cmd = [sys.executable, "-c", code, str(tree)]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        first, reason = out.stdout.splitlines()
        assert first == f"['Unreadable'] [{str(locked)!r}] 1", out.stderr
        assert "Permission denied" in reason
    finally:
        locked.chmod(0o755)


def test_bad_glob_is_a_clear_error(tree: Path) -> None:
    with pytest.raises(ValueError, match="invalid --exclude"):
        _rust.walk(str(tree), excludes=["a[b"])


def test_symlink_loop_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text("pass\n")
    os.symlink(tmp_path, tmp_path / "loop")
    files = _rust.walk(str(tmp_path), extensions=["py"]).files
    assert _rel(tmp_path, files) == ["x.py"]


def test_a_non_utf8_file_name_round_trips_byte_for_byte(tmp_path: Path) -> None:
    name = b"caf\xe9.py"  # latin-1, not UTF-8: a real name on this file system
    with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
        f.write(b"x = 1\n")
    (tmp_path / "ok.py").write_text("y = 2\n")
    walked = _rust.walk(str(tmp_path), extensions=["py"])
    files = walked.files
    assert walked.errors == []
    assert sorted(os.fsencode(Path(f).name) for f in files) == [name, b"ok.py"]
    assert all(os.path.exists(f) for f in files), "a lossy name would match no file"
    with open(next(f for f in files if os.fsencode(f).endswith(name)), "rb") as f:
        assert f.read() == b"x = 1\n"
