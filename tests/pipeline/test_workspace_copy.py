"""Isolated copies: every file its own inode (reflink or copy), nothing of ours copied."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pyagent.pipeline.workspace import copy_files, copy_untracked, isolated_copy, project_files, safe_relpath
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


def _generated_and_venvs(root: Path) -> None:
    """A gitignored generated module the tests import, and virtual environments (top level, nested)."""
    (root / ".gitignore").write_text("pkg/_version.py\nenv/\nbuild/\n")
    (root / "pkg" / "_version.py").write_text("VERSION = '1.2'\n")
    (root / "build").mkdir()
    (root / "build" / "ext.so").write_bytes(b"\x7fELF")
    for venv in ("env", "tools/venv311"):
        (root / venv / "lib").mkdir(parents=True)
        (root / venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
        (root / venv / "lib" / "site.py").write_text("x = 1\n")


def test_copy_holds_gitignored_files_the_tests_need_but_no_venv(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    _generated_and_venvs(root)
    assert "pkg/_version.py" not in project_files(root), "agents do not work on generated files"
    listing = copy_files(root)
    assert {"pkg/_version.py", "build/ext.so", ".gitignore", "pkg/mod.py"} <= set(listing)
    assert not [f for f in listing if f.startswith(("env/", "tools/venv311/"))], listing
    ws = isolated_copy(root, parent=tmp_path)
    try:
        assert (ws / "pkg" / "_version.py").read_text() == "VERSION = '1.2'\n"
        assert not (ws / "env").exists() and not (ws / "tools").exists()
    finally:
        shutil.rmtree(ws)


def test_copy_untracked_adds_only_what_the_checkout_lacks(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    _generated_and_venvs(root)
    checkout = tmp_path / "checkout"
    shutil.copytree(root, checkout, ignore=shutil.ignore_patterns("_version.py", "build", "env", "tools"))
    (checkout / "pkg" / "mod.py").write_text("# the checkout's own version\n")
    name = os.fsencode(root / "pkg") + b"/caf\xe9.dat"  # a non-UTF-8 name is copied too
    with open(name, "wb") as f:
        f.write(b"bytes")
    assert copy_untracked(root, checkout) == 3
    assert (checkout / "pkg" / "_version.py").read_text() == "VERSION = '1.2'\n"
    assert (checkout / "build" / "ext.so").read_bytes() == b"\x7fELF"
    assert (checkout / "pkg" / "mod.py").read_text() == "# the checkout's own version\n"
    with open(os.fsencode(checkout / "pkg") + b"/caf\xe9.dat", "rb") as f:
        assert f.read() == b"bytes"
    assert not (checkout / "env").exists()
