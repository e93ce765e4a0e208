"""Crash recovery: a journal found when no transaction holds the lock is rolled back.

Every pyagent command that works on a tree calls :func:`ensure_recovered` first, so a commit killed
half-way is undone before anyone looks at (or changes) the files again.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import blake3

from pyagent.state.fsutil import TreeLock, fsync_dir, fsync_dirs, remove_quietly, write_many_synced
from pyagent.state.journal import (
    CREATE,
    JOURNAL,
    LOCK,
    META_DIR,
    Journal,
    journal_path,
    read_journal,
    vault_dir,
)


@dataclass(frozen=True)
class RecoveryResult:
    """What a rollback did: files put back to their originals and files a dead commit had created."""

    txid: str
    restored: tuple[str, ...]
    removed: tuple[str, ...]


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


def _hash_file(path: bytes) -> tuple[str, int] | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
        return blake3.blake3(data).hexdigest(), os.stat(path).st_mode & 0o7777
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def rollback(root: str, journal: Journal) -> RecoveryResult:
    """Puts every file the journal names back as it was; idempotent, so a crash here is safe too."""
    broot = os.fsencode(root)
    dirs: set[bytes] = set()
    restores: list[tuple[bytes, bytes, int]] = []
    restored: list[str] = []
    removed: list[str] = []
    for e in journal.entries:
        target = os.path.join(broot, e.path)
        dirs.add(os.path.dirname(target))
        if e.tmp is not None:
            remove_quietly(os.path.join(broot, e.tmp))  # type: ignore[arg-type]
        if e.action == CREATE:
            if remove_quietly(target):  # type: ignore[arg-type]
                removed.append(os.fsdecode(e.path))
            continue
        head, tail = os.path.split(target)
        tmp = os.path.join(head, b"." + tail + b".pyagent-restore.tmp")
        remove_quietly(tmp)  # type: ignore[arg-type]  # left by a rollback that was itself killed
        current = _hash_file(target)
        mode = e.orig_mode if e.orig_mode is not None else 0o644
        if current == (e.orig_hash, mode):
            continue
        restores.append((target, journal.original(e), mode))
        restored.append(os.fsdecode(e.path))
    temps: list[tuple[str, bytes, int]] = []
    for target, data, mode in restores:
        head, tail = os.path.split(target)
        temps.append((os.fsdecode(os.path.join(head, b"." + tail + b".pyagent-restore.tmp")), data, mode))
    write_many_synced(temps)
    for (tmp_s, _, _), (target, _, _) in zip(temps, restores, strict=True):
        os.replace(tmp_s, target)
    for d in reversed(journal.created_dirs):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(broot, d))
            dirs.add(os.path.dirname(os.path.join(broot, d)))
    fsync_dirs(os.fsdecode(d) for d in dirs if os.path.isdir(d))
    os.unlink(journal_path(root))
    fsync_dir(vault_dir(root))
    return RecoveryResult(journal.txid, tuple(restored), tuple(removed))


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
