"""Isolated copies of a project, one per task, so concurrent agents never see each other's edits.

The copy is hard-linked (cheap even for big trees); the files a task may change are real copies
(copy-on-write by hand), so an agent writing them in place can never reach the original inode.
Hard links fall back to copies across file systems.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["IGNORED_DIRS", "isolated_copy", "project_files", "safe_relpath"]

# Never copied: VCS data, our own state, virtual environments and caches.
IGNORED_DIRS: tuple[str, ...] = (
    ".git",
    ".hg",
    ".svn",
    ".pyagent",
    ".venv",
    "venv",
    ".tox",
    ".nox",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "node_modules",
)


def safe_relpath(path: str) -> str:
    """A task path as POSIX, relative and inside the root; anything else is refused."""
    p = Path(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"path must be relative and inside the project: {path!r}")
    return p.as_posix()


def project_files(root: str | os.PathLike[str]) -> list[str]:
    """Every file of the project (POSIX, relative), honoring .gitignore and skipping IGNORED_DIRS."""
    from pyagent._rust import walk

    root_s = str(root)
    files, _errors = walk(root_s, hidden=True, excludes=list(IGNORED_DIRS))
    out = []
    for f in files:
        rel = Path(os.path.relpath(f, root_s)) if os.path.isabs(f) else Path(f)
        if any(part in IGNORED_DIRS for part in rel.parts):
            continue
        out.append(rel.as_posix())
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def isolated_copy(
    root: str | os.PathLike[str],
    *,
    writable: Iterable[str] = (),
    overlay: Mapping[str, bytes] | None = None,
    parent: str | os.PathLike[str] | None = None,
    files: Iterable[str] | None = None,
) -> Path:
    """Make a private copy of ``root`` and return its path (the caller removes it).

    ``writable`` files are copied, not linked; ``overlay`` replaces (or creates) files with given
    bytes. ``files`` lets a caller reuse one listing of the tree for many copies.
    """
    root = Path(root)
    dest = Path(tempfile.mkdtemp(prefix="pyagent-ws-", dir=parent))
    writable_set = {safe_relpath(w) for w in writable}
    overlay = {safe_relpath(k): v for k, v in (overlay or {}).items()}
    made_dirs: set[Path] = set()
    for rel in files if files is not None else project_files(root):
        target = dest / rel
        if target.parent not in made_dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(target.parent)
        if rel in overlay:
            continue
        src = root / rel
        if rel in writable_set:
            shutil.copy2(src, target)
        else:
            _link_or_copy(src, target)
    for rel, data in overlay.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        target.write_bytes(data)
    return dest
