"""Crash recovery: a journal found when no transaction holds the lock is rolled back.

Every pyagent command that works on a tree calls :func:`ensure_recovered` first, so a commit killed
half-way is undone before anyone looks at (or changes) the files again.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import blake3

from pyagent.state.beneath import RootDir
from pyagent.state.errors import UnsafePathError
from pyagent.state.fsutil import TreeLock, remove_quietly
from pyagent.state.journal import (
    CREATE,
    JOURNAL,
    LOCK,
    META_DIR,
    VAULT_REL,
    Entry,
    Journal,
    read_journal,
    vault_dir,
)


@dataclass(frozen=True)
class RecoveryResult:
    """What a rollback did: files put back to their originals and files a dead commit had created."""

    txid: str
    restored: tuple[str, ...]
    removed: tuple[str, ...]
    unsafe: tuple[str, ...] = ()  # entries behind a symlink now: left alone rather than written through


def workspace_root(path: str | os.PathLike[str]) -> str:
    """The tree a path belongs to: the nearest ancestor holding ``.pyagent/`` or ``.git``, else the path."""
    start = os.path.abspath(os.fspath(path))
    if not os.path.isdir(start):
        start = os.path.dirname(start)
    here = start
    while True:
        if os.path.isdir(os.path.join(here, META_DIR)) or os.path.exists(os.path.join(here, ".git")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return start
        here = parent


def _restore(rd: RootDir, e: Entry, journal: Journal) -> tuple[bytes, bytes, int] | None:
    """What must be written back for entry ``e`` as (temp name, bytes, mode); None when nothing is due."""
    if e.tmp is not None:
        rd.unlink(e.tmp)
    if e.action == CREATE:
        return None
    head, tail = os.path.split(e.path)
    tmp = os.path.join(head, b"." + tail + b".pyagent-restore.tmp")
    rd.unlink(tmp)  # left by a rollback that was itself killed
    mode = e.orig_mode if e.orig_mode is not None else 0o644
    try:
        data = rd.read(e.path)
        current = None if data is None else (blake3.blake3(data).hexdigest(), rd.lstat(e.path).st_mode & 0o7777)
    except IsADirectoryError:
        current = None
    if current == (e.orig_hash, mode):
        return None
    return tmp, journal.original(e), mode


def rollback(root: str, journal: Journal) -> RecoveryResult:
    """Puts every file the journal names back as it was; idempotent, so a crash here is safe too.

    Every write goes through directory handles beneath ``root`` (no symlink followed): a directory
    swapped for a link since the commit began is left alone and named in ``unsafe``.
    """
    restored: list[str] = []
    removed: list[str] = []
    unsafe: list[str] = []
    dirs: set[bytes] = set()
    with RootDir(root) as rd:
        restores: list[tuple[bytes, bytes, bytes, int]] = []
        for e in journal.entries:
            try:
                due = _restore(rd, e, journal)
                if e.action == CREATE:
                    if rd.unlink(e.path):
                        removed.append(os.fsdecode(e.path))
                    dirs.add(os.path.dirname(e.path))
                elif due is not None:
                    restores.append((e.path, *due))
                    dirs.add(os.path.dirname(e.path))
            except UnsafePathError:
                unsafe.append(os.fsdecode(e.path))
        rd.write_many_new([(tmp, data, mode) for _, tmp, data, mode in restores])
        for path, tmp, _, _ in restores:
            rd.replace(tmp, path)
            restored.append(os.fsdecode(path))
        for d in reversed(journal.created_dirs):
            with contextlib.suppress(OSError):
                rd.rmdir(d)
                dirs.add(os.path.dirname(d))
        rd.fsync_dirs([d for d in dirs if rd.is_dir(d)])
        rd.unlink(f"{VAULT_REL}/{JOURNAL}")
        rd.fsync_dir(VAULT_REL)
    return RecoveryResult(journal.txid, tuple(restored), tuple(removed), tuple(unsafe))


def recover_locked(root: str) -> RecoveryResult | None:
    """Rolls back a hot journal; the caller holds the tree's lock."""
    remove_quietly(os.path.join(vault_dir(root), JOURNAL + ".tmp"))  # never trusted: tree not touched yet
    journal = read_journal(root)
    if journal is None:
        return None
    return rollback(root, journal)


def recover(root: str | os.PathLike[str], *, lock_timeout: float = 10.0) -> RecoveryResult | None:
    """Rolls back the hot journal of ``root`` if there is one; None when there was nothing to do."""
    root_s = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_s):
        raise FileNotFoundError(f"no such directory: {root_s}")
    if not os.path.isdir(vault_dir(root_s)):
        return None
    lock = TreeLock(os.path.join(root_s, META_DIR, LOCK), root_s)
    lock.acquire(lock_timeout)
    try:
        return recover_locked(root_s)
    finally:
        lock.release()


def ensure_recovered(path: str | os.PathLike[str], *, lock_timeout: float = 10.0) -> RecoveryResult | None:
    """Cheap check every command runs before touching a tree: recovers only when a journal is present."""
    root = workspace_root(path)
    vault = vault_dir(root)
    if not (os.path.exists(os.path.join(vault, JOURNAL)) or os.path.exists(os.path.join(vault, JOURNAL + ".tmp"))):
        return None
    return recover(root, lock_timeout=lock_timeout)
