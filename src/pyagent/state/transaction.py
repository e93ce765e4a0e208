"""StateTransaction: stage many file changes, then apply all of them or none, even if killed.

Commit protocol (SQLite's rollback journal is the model):

1. Under the tree lock, re-read every file the transaction touches; a file whose blake3 differs from the
   one the transaction started from raises :class:`ConflictError` naming it (nothing written yet).
2. Originals + a manifest (paths, blake3 hashes, mode bits, temp names) go into one journal file in
   ``ROOT/.pyagent/vault/``, fsynced and renamed into place: from here the journal is "hot".
3. Every new content is written to a temp file next to its target, mode bits set, fsynced (in parallel).
4. ``os.replace`` each temp over its target, unlink deleted files; fsync each touched directory once.
5. Unlinking the journal (and fsyncing the vault) is the commit point.

A crash before 5 leaves a hot journal: :func:`pyagent.state.recovery.recover` (run automatically by the
next transaction or pyagent command on the tree) puts every original back and removes created files.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType

import blake3

from pyagent.state.beneath import RootDir
from pyagent.state.errors import ConflictError, TransactionError, UnsafePathError
from pyagent.state.fsutil import TreeLock, remove_quietly
from pyagent.state.journal import (
    CREATE,
    DELETE,
    JOURNAL,
    LOCK,
    META_DIR,
    MODIFY,
    VAULT_REL,
    Entry,
    vault_dir,
    write_journal,
)
from pyagent.state.recovery import recover_locked, rollback

PathArg = str | os.PathLike[str]
_ABSENT = "absent"  # base marker: the file did not exist when the transaction first looked


@dataclass(frozen=True)
class CommitResult:
    """What a commit changed (POSIX paths relative to the root) and where its time went."""

    changed: tuple[str, ...] = ()
    created: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    journal_bytes: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # check, journal, write, rename, dirsync, finish

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(sorted((*self.changed, *self.created, *self.deleted)))

    @property
    def fsync_seconds(self) -> float:
        """Time spent making things durable (journal, temp files, directories, commit point)."""
        t = self.timings
        return t.get("journal", 0.0) + t.get("write", 0.0) + t.get("dirsync", 0.0) + t.get("finish", 0.0)


def _why(exc: OSError) -> str:
    """An OS error in words, the full-disk case spelled out (it is the one users can fix)."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full (no space left on device)"
    if exc.errno == errno.EFBIG:
        return "the file size limit was reached"
    return exc.strerror or str(exc)


def hash_bytes(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def add_git_exclude(root: str) -> None:
    """Keeps ``.pyagent/`` out of ``git status`` when ``root`` is a git work tree (main or linked)."""
    dotgit = os.path.join(root, ".git")
    if os.path.isdir(dotgit):
        gitdir = dotgit
    elif os.path.isfile(dotgit):
        with open(dotgit, encoding="utf-8", errors="replace") as f:
            line = f.read().strip()
        if not line.startswith("gitdir:"):
            return
        gitdir = os.path.join(root, line.split(":", 1)[1].strip())
        common = os.path.join(gitdir, "commondir")
        if os.path.isfile(common):
            with open(common, encoding="utf-8") as f:
                gitdir = os.path.join(gitdir, f.read().strip())
    else:
        return
    exclude = os.path.join(gitdir, "info", "exclude")
    with contextlib.suppress(FileNotFoundError), open(exclude, encoding="utf-8", errors="replace") as f:
        if any(line.strip() in ("/.pyagent/", ".pyagent/", "/.pyagent", ".pyagent") for line in f):
            return
    os.makedirs(os.path.dirname(exclude), exist_ok=True)
    with open(exclude, "a", encoding="utf-8") as f:
        f.write("\n# PyAgent's transaction vault and lock\n/.pyagent/\n")


def _make_vault(root: str) -> None:
    """Creates ROOT/.pyagent/vault durably: a journal in a directory that a power cut forgets is no journal."""
    vault = vault_dir(root)
    try:
        with RootDir(root) as rd:  # a symlinked .pyagent/ or vault/ raises UnsafePathError
            if rd.is_dir(VAULT_REL):
                return
            for rel in (META_DIR, VAULT_REL):
                if not rd.is_dir(rel):
                    rd.mkdir(rel)
            rd.fsync_dir(META_DIR)
            rd.fsync_dir("")
    except OSError as exc:
        raise TransactionError(f"cannot create PyAgent's vault {vault}: {exc.strerror or exc}") from exc


@dataclass
class _CommitPlan:
    """Everything one commit will do, decided before the first byte is written."""

    entries: list[Entry] = field(default_factory=list)
    originals: list[bytes] = field(default_factory=list)  # vault contents, in entry order
    writes: list[tuple[str, bytes, int]] = field(default_factory=list)  # (tmp, data, mode), relative to the root
    renames: list[tuple[str, str]] = field(default_factory=list)  # (tmp, target), relative to the root
    deletes: list[str] = field(default_factory=list)
    created_dirs: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    offset: int = 0

    def keep_original(self, data: bytes) -> int:
        """Put ``data`` in the vault; returns its offset there."""
        offset = self.offset
        self.originals.append(data)
        self.offset += len(data)
        return offset


class StateTransaction:
    """A set of file changes to one tree, staged in memory and applied atomically on commit.

    Holds the tree's lock from construction until commit or abort, so no other transaction (or
    recovery) interleaves. Reads see the transaction's own staged writes.
    """

    def __init__(self, root: PathArg, *, lock_timeout: float = 10.0) -> None:
        root_s = os.path.abspath(os.fspath(root))
        if not os.path.isdir(root_s):
            raise FileNotFoundError(f"transaction root is not a directory: {root_s}")
        self.root = root_s
        self._real_root = os.path.realpath(root_s)
        _make_vault(root_s)
        add_git_exclude(root_s)
        self._lock = TreeLock(os.path.join(root_s, META_DIR, LOCK), root_s)
        self._lock.acquire(lock_timeout)
        self._staged: dict[str, bytes | None] = {}
        self._base: dict[str, str] = {}  # blake3 hex, or _ABSENT
        self._modes: dict[str, int] = {}
        self._done = False
        self._parent_ok: set[str] = set()
        self.last_result = CommitResult()
        try:
            self.recovered = recover_locked(root_s)
        except BaseException:
            self._lock.release()
            raise

    # -- context manager ----------------------------------------------------------------------
    def __enter__(self) -> StateTransaction:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    # -- paths --------------------------------------------------------------------------------
    def _rel(self, path: PathArg) -> str:
        p = os.fspath(path)
        full = os.path.normpath(p if os.path.isabs(p) else os.path.join(self.root, p))
        rel = os.path.relpath(full, self.root)
        parts = rel.split(os.sep)
        if rel == "." or parts[0] == "..":
            raise ValueError(f"{p} is outside the transaction's root {self.root}")
        if parts[0] == META_DIR:
            raise ValueError(f"{p} is inside PyAgent's own {META_DIR}/ folder")
        parent = os.path.dirname(full)
        if parent not in self._parent_ok:
            real_parent = os.path.realpath(parent)
            if os.path.commonpath([real_parent, self._real_root]) != self._real_root:
                raise UnsafePathError(p, "leads outside the transaction's root through a symlink")
            self._parent_ok.add(parent)
        return "/".join(parts)

    def _full(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def _check_open(self) -> None:
        if self._done:
            raise TransactionError("this transaction has already been committed or aborted")

    def _disk_read(self, rel: str) -> bytes | None:
        """The file as it is now, read through directory handles (no symlink followed on the way)."""
        with RootDir(self.root) as rd:
            return rd.read(rel)

    def _note_base(self, rel: str, data: bytes | None) -> None:
        if rel not in self._base:
            self._base[rel] = _ABSENT if data is None else hash_bytes(data)

    # -- reads --------------------------------------------------------------------------------
    def read_bytes(self, path: PathArg) -> bytes:
        self._check_open()
        rel = self._rel(path)
        if rel in self._staged:
            data = self._staged[rel]
        else:
            data = self._disk_read(rel)
            self._note_base(rel, data)
        if data is None:
            raise FileNotFoundError(f"no such file: {rel}")
        return data

    def read_text(self, path: PathArg, encoding: str = "utf-8") -> str:
        return self.read_bytes(path).decode(encoding)

    def exists(self, path: PathArg) -> bool:
        self._check_open()
        rel = self._rel(path)
        if rel in self._staged:
            return self._staged[rel] is not None
        with RootDir(self.root) as rd:
            try:
                return stat.S_ISREG(rd.lstat(rel).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                return False

    # -- writes -------------------------------------------------------------------------------
    def write_bytes(self, path: PathArg, data: bytes, *, base_hash: str | None = None) -> None:
        """Stages new content. ``base_hash`` (blake3 hex) names the version the change was computed
        from; without it the base is the file as the transaction first sees it."""
        self._check_open()
        rel = self._rel(path)
        if base_hash is not None:
            self._base.setdefault(rel, base_hash)
        elif rel not in self._base and rel not in self._staged:
            self._note_base(rel, self._disk_read(rel))
        self._staged[rel] = bytes(data)

    def write_text(self, path: PathArg, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(path, text.encode(encoding))

    def create(self, path: PathArg, data: bytes) -> None:
        if self.exists(path):
            raise FileExistsError(f"{self._rel(path)} already exists")
        rel = self._rel(path)
        self._base.setdefault(rel, _ABSENT)
        self._staged[rel] = bytes(data)

    def delete(self, path: PathArg) -> None:
        self.read_bytes(path)  # raises FileNotFoundError, records the base
        self._staged[self._rel(path)] = None

    def rename(self, src: PathArg, dst: PathArg, *, overwrite: bool = False) -> None:
        data = self.read_bytes(src)
        rel_src, rel_dst = self._rel(src), self._rel(dst)
        if rel_src == rel_dst:
            return
        if self.exists(dst) and not overwrite:
            raise FileExistsError(f"{rel_dst} already exists (pass overwrite=True to replace it)")
        mode = self._modes.get(rel_src)
        if mode is None:
            with contextlib.suppress(FileNotFoundError), RootDir(self.root) as rd:
                mode = rd.lstat(rel_src).st_mode & 0o7777
        self.delete(src)
        self.write_bytes(dst, data)
        if mode is not None:
            self._modes[rel_dst] = mode

    @property
    def staged_paths(self) -> tuple[str, ...]:
        return tuple(sorted(self._staged))

    # -- end ----------------------------------------------------------------------------------
    def abort(self) -> None:
        """Drops every staged change; the tree was never touched."""
        self._staged.clear()
        self._done = True
        self._lock.release()

    def commit(self) -> CommitResult:
        """Applies every staged change or none. A full disk (or any OS error) at any step is one
        ``TransactionError`` saying so, with the tree, the vault and every temp file as before."""
        self._check_open()
        try:
            with RootDir(self.root) as rd:
                self.last_result = self._commit(rd)
            return self.last_result
        except TransactionError:
            raise
        except OSError as exc:
            raise TransactionError(f"commit failed, nothing changed: {_why(exc)}") from exc
        finally:
            self._done = True
            self._lock.release()

    def _commit(self, rd: RootDir) -> CommitResult:
        t0 = time.perf_counter()
        txid = uuid.uuid4().hex[:12]
        plan = self._plan(rd, txid)
        timings = {"check": time.perf_counter() - t0}
        if not plan.entries:
            return CommitResult(timings=timings)
        return self._apply(rd, plan, txid, timings)

    # -- the plan: what the commit will do, decided (and conflicts found) before anything is written

    def _plan(self, rd: RootDir, txid: str) -> _CommitPlan:
        umask = os.umask(0)
        os.umask(umask)
        plan = _CommitPlan()
        for rel, current, cur_hash in self._read_current(rd, sorted(self._staged)):
            self._check_base(rel, current, cur_hash)
            new = self._staged[rel]
            if new is None:
                if current is not None:
                    self._plan_delete(rd, plan, rel, current, cur_hash)
            else:
                self._plan_write(rd, plan, rel, new, current, cur_hash, txid, umask)
        return plan

    def _check_base(self, rel: str, current: bytes | None, cur_hash: str) -> None:
        base = self._base.get(rel)
        if base is not None and base != cur_hash:
            detail = "it was deleted" if current is None else ("it was created" if base == _ABSENT else "")
            raise ConflictError(rel, detail)

    @staticmethod
    def _plan_delete(rd: RootDir, plan: _CommitPlan, rel: str, current: bytes, cur_hash: str) -> None:
        mode = rd.lstat(rel).st_mode & 0o7777
        plan.entries.append(Entry(os.fsencode(rel), DELETE, cur_hash, mode, plan.keep_original(current), len(current)))
        plan.deletes.append(rel)
        plan.deleted.append(rel)

    def _plan_write(
        self, rd: RootDir, plan: _CommitPlan, rel: str, new: bytes, current: bytes | None, cur_hash: str, txid: str,
        umask: int,
    ) -> None:
        brel = os.fsencode(rel)
        head, tail = os.path.split(rel)
        tmp = os.path.join(head, f".{tail}.pyagent-{txid}.tmp")
        brtmp = os.fsencode(tmp)
        new_hash = hash_bytes(new)
        if current is None:
            mode = self._modes.get(rel, 0o666 & ~umask)
            self._plan_parents(rd, plan, rel)
            plan.entries.append(Entry(brel, CREATE, None, None, 0, 0, brtmp, new_hash))
            plan.created.append(rel)
        else:
            if new_hash == cur_hash:
                return
            mode = self._modes.get(rel, rd.lstat(rel).st_mode & 0o7777)
            offset = plan.keep_original(current)
            plan.entries.append(Entry(brel, MODIFY, cur_hash, mode, offset, len(current), brtmp, new_hash))
            plan.changed.append(rel)
        plan.writes.append((tmp, new, mode))
        plan.renames.append((tmp, rel))

    @staticmethod
    def _plan_parents(rd: RootDir, plan: _CommitPlan, rel: str) -> None:
        """Folders a new file needs that do not exist yet, outermost first (the journal removes them on rollback)."""
        parent = os.path.dirname(rel)
        missing: list[str] = []
        while parent and not rd.is_dir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for d in reversed(missing):
            if d not in plan.created_dirs:
                plan.created_dirs.append(d)

    # -- the apply: journal, write, rename, sync, commit point; in this order, nothing else

    def _apply(self, rd: RootDir, plan: _CommitPlan, txid: str, timings: dict[str, float]) -> CommitResult:
        t = time.perf_counter()
        created_dirs = [os.fsencode(d) for d in plan.created_dirs]
        try:
            size = write_journal(rd, txid, plan.entries, plan.originals, created_dirs)
        except OSError as exc:  # journal.tmp is gone again; the tree was not touched
            raise TransactionError(
                f"could not write the rollback journal in {vault_dir(self.root)}: {_why(exc)}; nothing changed"
            ) from exc
        timings["journal"] = time.perf_counter() - t
        try:
            self._apply_changes(rd, plan, timings)
        except BaseException as exc:
            self._rollback_after_failure(exc)
            raise
        t = time.perf_counter()
        rd.unlink(f"{VAULT_REL}/{JOURNAL}")  # the commit point
        rd.fsync_dir(VAULT_REL)
        timings["finish"] = time.perf_counter() - t
        return CommitResult(tuple(plan.changed), tuple(plan.created), tuple(plan.deleted), size, timings)

    @staticmethod
    def _apply_changes(rd: RootDir, plan: _CommitPlan, timings: dict[str, float]) -> None:
        """Every write through directory handles beneath the root (no symlink followed on the way)."""
        t = time.perf_counter()
        for d in plan.created_dirs:
            rd.mkdir(d)
        rd.write_many_new(plan.writes)
        timings["write"] = time.perf_counter() - t
        t = time.perf_counter()
        for tmp, rel in plan.renames:
            rd.replace(tmp, rel)
        for rel in plan.deletes:
            rd.unlink(rel)
        timings["rename"] = time.perf_counter() - t
        t = time.perf_counter()
        dirs = {os.path.dirname(rel) for _, rel in plan.renames}
        dirs.update(os.path.dirname(rel) for rel in plan.deletes)
        dirs.update(os.path.dirname(d) for d in plan.created_dirs)
        rd.fsync_dirs(dirs)
        timings["dirsync"] = time.perf_counter() - t

    @staticmethod
    def _read_current(rd: RootDir, rels: list[str]) -> list[tuple[str, bytes | None, str]]:
        """What is on disk now, with its hash; read in parallel (I/O and blake3 release the GIL)."""

        def one(rel: str) -> tuple[str, bytes | None, str]:
            data = rd.read(rel)
            return rel, data, _ABSENT if data is None else hash_bytes(data)

        if len(rels) < 16:
            return [one(rel) for rel in rels]
        with ThreadPoolExecutor(min(8, len(rels))) as pool:
            return list(pool.map(one, rels))

    def _rollback_after_failure(self, exc: BaseException) -> None:
        """Undo a commit that failed half-way (disk full, permission denied); the journal says how."""
        from pyagent.state.journal import read_journal

        journal = read_journal(self.root)
        result = rollback(self.root, journal) if journal is not None else None
        if result is not None and result.unsafe:
            why = _why(exc) if isinstance(exc, OSError) else str(exc)
            raise TransactionError(
                f"commit failed ({why}) and was rolled back, except {len(result.unsafe)} file(s) now "
                f"behind a symlink, left alone: {', '.join(result.unsafe[:5])}"
            ) from exc
        if isinstance(exc, UnsafePathError):
            raise TransactionError(f"commit stopped and was rolled back, nothing changed: {exc}") from exc
        if isinstance(exc, OSError):
            raise TransactionError(f"commit failed and was rolled back, nothing changed: {_why(exc)}") from exc

    def __repr__(self) -> str:
        state = "done" if self._done else f"{len(self._staged)} staged"
        return f"StateTransaction({self.root!r}, {state})"


__all__ = ["CommitResult", "StateTransaction", "add_git_exclude", "hash_bytes", "remove_quietly"]
