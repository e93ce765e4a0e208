"""The one atomic file write: content, mode bits, and nothing left behind when it fails."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyagent.state.fsutil import atomic_write, atomic_writer


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_new_file_and_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write(str(target), b"second\x00\xff" * 1000)
    assert target.read_bytes() == b"second\x00\xff" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_explicit_mode_is_exact_and_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "public", b"k", mode=0o644)
    finally:
        os.umask(old)
    atomic_write(tmp_path / "secret", b"k", mode=0o600)
    assert _mode(tmp_path / "public") == 0o644
    assert _mode(tmp_path / "secret") == 0o600


def test_mode_replaces_the_old_files_mode(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"old")
    target.chmod(0o666)
    atomic_write(target, b"new", mode=0o600)
    assert _mode(target) == 0o600
    assert target.read_bytes() == b"new"


def test_default_mode_is_what_open_would_give(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a", b"x", durable=False)
        with open(tmp_path / "b", "wb") as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == 0o640
    assert _mode(tmp_path / "a") == _mode(tmp_path / "b")


def test_failure_keeps_old_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_writer(target) as fh:
        fh.write(b"partial")
        raise Boom
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_failed_replace_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_bytes(b"")  # os.replace cannot put a file over a non-empty directory
    with pytest.raises(OSError):
        atomic_write(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (target / "inside").exists()


def test_bad_data_type_leaves_no_temp(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        atomic_write(tmp_path / "f", "text, not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "nope" / "f", b"x")
    assert list(tmp_path.iterdir()) == []


def test_relative_path_in_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    atomic_write("rel.txt", b"here")
    assert (tmp_path / "rel.txt").read_bytes() == b"here"
