"""Isolated copies: every file its own inode (reflink or copy), nothing of ours copied."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pyagent.pipeline.workspace import isolated_copy, project_files, safe_relpath
from tests.improve_helpers import make_project


def test_copy_has_its_own_inodes_and_leaves_our_state_and_vcs_out(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / ".pyagent").mkdir()
    (root / ".pyagent" / "x").write_text("state")
    ws = isolated_copy(root, parent=tmp_path)
    try:
        for rel in ("pkg/registry.py", "pkg/mod.py"):
            assert (ws / rel).stat().st_ino != (root / rel).stat().st_ino
            assert (ws / rel).read_bytes() == (root / rel).read_bytes()
            assert (ws / rel).stat().st_mode == (root / rel).stat().st_mode
        (ws / "pkg" / "mod.py").write_text("changed\n")
        assert (root / "pkg" / "mod.py").read_text().startswith("import os")
        assert not (ws / ".git").exists() and not (ws / ".pyagent").exists()
    finally:
        shutil.rmtree(ws)


def test_overlay_replaces_contents(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    ws = isolated_copy(root, overlay={"pkg/mod.py": b"x = 1\n", "pkg/new.py": b"y = 2\n"}, parent=tmp_path)
    try:
        assert (ws / "pkg" / "mod.py").read_bytes() == b"x = 1\n"
        assert (ws / "pkg" / "new.py").read_bytes() == b"y = 2\n"
        assert (root / "pkg" / "mod.py").read_text().startswith("import os")
    finally:
        shutil.rmtree(ws)


def test_listing_is_relative_and_skips_caches(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "m.pyc").write_bytes(b"\0")
    files = project_files(root)
    assert "pkg/mod.py" in files and "tests/test_pkg.py" in files
    assert not any("__pycache__" in f for f in files)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x.py", "a/../../b.py", ""])
def test_paths_outside_the_project_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="relative and inside"):
        safe_relpath(bad)
