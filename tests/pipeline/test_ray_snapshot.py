"""The node side of the Ray executor's snapshot: unpacked once per node into a private directory."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from pyagent.pipeline import ray_executor


@pytest.fixture
def tmp_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / f"pyagent-ray-{os.getuid()}"


def test_a_snapshot_is_unpacked_once_with_its_modes(tmp_base: Path) -> None:
    fetched: list[int] = []

    def fetch() -> dict[str, tuple[bytes, int]]:
        fetched.append(1)
        return {"pkg/mod.py": (b"x = 1\n", 0o644), "run.sh": (b"#!/bin/sh\n", 0o755)}

    first = ray_executor._unpack("abc-1", fetch)
    again = ray_executor._unpack("abc-1", fetch)
    assert first == again == tmp_base / "abc-1"
    assert fetched == [1]  # the second worker of the node found it unpacked
    assert (first / "pkg/mod.py").read_bytes() == b"x = 1\n"
    assert os.access(first / "run.sh", os.X_OK) and not os.access(first / "pkg/mod.py", os.X_OK)
    assert stat.S_IMODE(tmp_base.stat().st_mode) == 0o700
    assert [p.name for p in tmp_base.iterdir()] == ["abc-1"]  # no half-unpacked leftovers
    assert ray_executor.forget_snapshot("abc-1")
    assert not first.exists()


def test_a_path_outside_the_snapshot_is_refused(tmp_base: Path) -> None:
    with pytest.raises(ValueError):
        ray_executor._unpack("evil-1", lambda: {"../escape.py": (b"", 0o644)})
    assert not (tmp_base.parent / "escape.py").exists()
    assert list(tmp_base.iterdir()) == []  # the partial unpack was removed


def test_a_base_directory_others_can_write_is_refused(tmp_base: Path) -> None:
    tmp_base.mkdir()
    tmp_base.chmod(0o777)
    with pytest.raises(RuntimeError, match="not a private directory"):
        ray_executor._unpack("abc-1", lambda: {"a.py": (b"", 0o644)})
