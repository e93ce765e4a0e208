"""Isolated copies of a project, one per task, that share nothing writable with the user's tree.

Code that runs in a copy (the project's tests, an agent's edit) may write any file there; it must
never reach the original. Hard links would share the inode (a test appending to a source file would
change the user's real file), so every file is a separate inode: a reflink clone (``FICLONE``, the
copy-on-write clone of btrfs, XFS and others: no data copied) where the file system supports it
between the two trees, otherwise a plain copy (``sendfile`` in the kernel). The method is probed once
per (source device, destination device) pair and remembered; ``benchmarks/workspace_copy.py`` prints
what each method costs on a real tree.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

__all__ = [
    "IGNORED_DIRS",
    "CopyMethod",
    "copy_files",
    "copy_method",
    "copy_untracked",
    "isolated_copy",
    "project_files",
    "safe_relpath",
]

CopyMethod = Literal["reflink", "copy"]

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

_FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h
# What a file system (or a pair of them) says when it cannot clone: fall back to copying.
_NO_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}
_methods: dict[tuple[int, int], CopyMethod] = {}
_methods_lock = threading.Lock()


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
    out = []
    for f in walk(root_s, hidden=True, excludes=list(IGNORED_DIRS)).files:
        rel = Path(os.path.relpath(f, root_s)) if os.path.isabs(f) else Path(f)
        if any(part in IGNORED_DIRS for part in rel.parts):
            continue
        out.append(rel.as_posix())
    return out


def copy_files(root: str | os.PathLike[str]) -> list[str]:
    """What a copy must hold for the project to run (POSIX, relative): every file, gitignored and
    untracked ones included (a generated ``version.py``, a built extension), except IGNORED_DIRS and
    virtual environments (any directory holding a ``pyvenv.cfg``). ``project_files`` is what agents
    may change; this is what the tests may need."""
    from pyagent._rust import walk

    root_s = str(root)
    excludes = list(IGNORED_DIRS)
    with contextlib.suppress(OSError), os.scandir(root_s) as it:  # top-level venvs: not even walked
        excludes += [f"/{e.name}/" for e in it if e.is_dir(follow_symlinks=False)
                     and os.path.isfile(os.path.join(e.path, "pyvenv.cfg"))]
    files = walk(root_s, hidden=True, no_ignore=True, excludes=excludes).files
    rels = [Path(os.path.relpath(f, root_s)) if os.path.isabs(f) else Path(f) for f in files]
    venvs = {r.parent for r in rels if r.name == "pyvenv.cfg"}
    return [r.as_posix() for r in rels if not any(part in IGNORED_DIRS for part in r.parts)
            and not any(v == r.parent or v in r.parents for v in venvs)]


def copy_untracked(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> int:
    """Copies into ``dest`` (a fresh checkout of ``src``'s repository) the files of ``src`` that the
    checkout lacks: the untracked and gitignored files the tests may need. Returns how many."""
    src_p, dest_p = Path(src), Path(dest)
    missing = [rel for rel in copy_files(src_p) if not os.path.lexists(dest_p / rel)]
    if missing:
        method = copy_method(src_p / missing[0], dest_p)
        for rel in missing:
            (dest_p / rel).parent.mkdir(parents=True, exist_ok=True)
            _copy_file(src_p / rel, dest_p / rel, method)
    return len(missing)


def _clone(src: Path, dst: Path) -> None:
    """A reflink clone of ``src`` at the new path ``dst`` (mode and times kept); OSError if impossible."""
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.ioctl(fd, _FICLONE, fin.fileno())
        except OSError:
            os.close(fd)
            os.unlink(dst)
            raise
        os.close(fd)
    shutil.copystat(src, dst)


def copy_method(src: str | os.PathLike[str], dest_dir: str | os.PathLike[str]) -> CopyMethod:
    """How files of ``src`` (a file) are best copied into ``dest_dir`` on this machine.

    Reflink when a trial clone of ``src`` into ``dest_dir`` works (nothing is written to the source
    tree), else a plain copy; remembered per pair of devices.
    """
    key = (os.stat(src).st_dev, os.stat(dest_dir).st_dev)
    with _methods_lock:
        known = _methods.get(key)
    if known is not None:
        return known
    probe = Path(tempfile.mkdtemp(prefix=".pyagent-clone-probe-", dir=dest_dir)) / "probe"
    method: CopyMethod = "copy"
    try:
        _clone(Path(src), probe)
        method = "reflink"
    except OSError as exc:
        if exc.errno not in _NO_CLONE:
            raise
    finally:
        shutil.rmtree(probe.parent, ignore_errors=True)
    with _methods_lock:
        _methods[key] = method
    return method


def _copy_file(src: Path, dst: Path, method: CopyMethod) -> None:
    """A new inode at ``dst`` with ``src``'s bytes and mode bits; never a link to ``src``."""
    if method == "reflink":
        try:
            _clone(src, dst)
            return
        except OSError as exc:  # this one file sits elsewhere (a bind mount, another device)
            if exc.errno not in _NO_CLONE:
                raise
    shutil.copy2(src, dst)


def isolated_copy(
    root: str | os.PathLike[str],
    *,
    overlay: Mapping[str, bytes] | None = None,
    parent: str | os.PathLike[str] | None = None,
    files: Iterable[str] | None = None,
) -> Path:
    """Make a private copy of ``root`` and return its path (the caller removes it).

    Every file is its own inode (see the module docstring); ``overlay`` replaces (or creates) files
    with given bytes. ``files`` lets a caller reuse one listing of the tree (``copy_files``) for many copies.
    """
    root = Path(root)
    dest = Path(tempfile.mkdtemp(prefix="pyagent-ws-", dir=parent))
    overlay = {safe_relpath(k): v for k, v in (overlay or {}).items()}
    listing = list(files) if files is not None else copy_files(root)
    made_dirs: set[Path] = set()
    pairs: list[tuple[Path, Path]] = []
    for rel in listing:
        target = dest / rel
        if target.parent not in made_dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(target.parent)
        if rel not in overlay:
            pairs.append((root / rel, target))
    if pairs:
        method = copy_method(pairs[0][0], dest)
        for src, target in pairs:
            _copy_file(src, target, method)
    for rel, data in overlay.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        target.write_bytes(data)
    return dest
