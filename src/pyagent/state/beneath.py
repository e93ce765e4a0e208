"""Directory handles beneath a transaction's root, opened without following a symlink at any step.

A path string is resolved again by the kernel on every call, so a directory swapped for a symlink to
an outside directory between the transaction's check and its write would redirect the write there.
Every read, write, rename and unlink of a commit therefore goes through a handle of the file's parent
directory, reached from the root's handle one component at a time with ``O_NOFOLLOW``; the file itself
is opened ``O_NOFOLLOW`` too and renamed with ``renameat`` between handles. A symlink anywhere on the
way is refused (:class:`~pyagent.state.errors.UnsafePathError`), whatever it points to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from pyagent.state.errors import UnsafePathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SYNC_WORKERS = 16  # fsync releases the GIL, so a few threads let the disk batch many syncs


class RootDir:
    """Opened handles of ``root`` and of directories beneath it; ``close`` releases them all.

    Paths given to its methods are relative to the root, with ``/`` or ``os.sep`` as separator,
    as ``str`` or raw ``bytes`` (file names that are not UTF-8 stay bytes end to end).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._dirs: dict[bytes, int] = {}  # kept until close: a handle in use is never closed under a thread
        self._lock = threading.RLock()

    def __enter__(self) -> RootDir:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @staticmethod
    def _parts(rel: str | bytes) -> list[bytes]:
        raw = os.fsencode(rel).replace(os.fsencode(os.sep), b"/")
        parts = [p for p in raw.split(b"/") if p and p != b"."]
        if not parts or b".." in parts or raw.startswith(b"/"):
            raise UnsafePathError(os.fsdecode(rel), "is not a path inside the root")
        return parts

    def dir(self, rel_dir: str | bytes) -> int:
        """The handle of directory ``rel_dir`` ("" is the root); FileNotFoundError if it is missing."""
        raw = os.fsencode(rel_dir).replace(os.fsencode(os.sep), b"/").strip(b"/")
        if not raw or raw == b".":
            return self.fd
        raw = b"/".join(self._parts(raw))  # one cache key per directory, however it was spelled
        with self._lock:
            cached = self._dirs.get(raw)
            if cached is not None:
                return cached
            return self._open_dir(raw)

    def _open_dir(self, raw: bytes) -> int:
        parts = self._parts(raw)
        head = b"/".join(parts[:-1])
        parent = self.dir(head)
        try:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and self._is_link(parent, parts[-1])):
                raise UnsafePathError(os.fsdecode(raw), "is a symlink; PyAgent never writes through links") from None
            if exc.errno == errno.ENOTDIR:  # a link or file now, or swapped back already: either way not ours
                raise UnsafePathError(os.fsdecode(raw), "is not a directory (it changed into a symlink or file "
                                      "while PyAgent worked on it)") from None
            raise
        self._dirs[raw] = fd
        return fd

    @staticmethod
    def _is_link(parent: int, name: bytes) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def parent(self, rel: str | bytes) -> tuple[int, bytes]:
        """(handle of the parent directory, file name) of ``rel``."""
        parts = self._parts(rel)
        return self.dir(b"/".join(parts[:-1])), parts[-1]

    def is_dir(self, rel_dir: str | bytes) -> bool:
        """Whether ``rel_dir`` exists as a real directory (a symlink on the way raises)."""
        try:
            self.dir(rel_dir)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def lstat(self, rel: str | bytes) -> os.stat_result:
        fd, name = self.parent(rel)
        return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def read(self, rel: str | bytes) -> bytes | None:
        """The bytes of regular file ``rel``; None when it is missing. A symlink or directory raises."""
        try:
            fd, name = self.parent(rel)
            f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(os.fsdecode(rel), "is a symlink; PyAgent does not change files through links") from None
            raise
        try:
            st = os.fstat(f)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(f"{os.fsdecode(rel)} is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePathError(os.fsdecode(rel), "is not a regular file")
            chunks = []
            while chunk := os.read(f, max(st.st_size, 1 << 16)):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(f)

    def mkdir(self, rel_dir: str | bytes) -> None:
        fd, name = self.parent(rel_dir)
        os.mkdir(name, 0o777, dir_fd=fd)

    def rmdir(self, rel_dir: str | bytes) -> None:
        fd, name = self.parent(rel_dir)
        os.rmdir(name, dir_fd=fd)
        with self._lock:
            old = self._dirs.pop(b"/".join(self._parts(rel_dir)), None)
        if old is not None:
            os.close(old)

    def replace(self, src: str | bytes, dst: str | bytes) -> None:
        """``renameat`` between the two parents' handles (the same directory for a commit's temp files)."""
        sfd, sname = self.parent(src)
        dfd, dname = self.parent(dst)
        os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)

    def unlink(self, rel: str | bytes) -> bool:
        """Removes file ``rel``; True when something was removed."""
        try:
            fd, name = self.parent(rel)
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            return False
        return True

    def write_new(self, rel: str | bytes, data: bytes, mode: int) -> None:
        """Writes a new file (it must not exist: ``O_EXCL`` never follows a link), sets its mode, fsyncs."""
        fd, name = self.parent(rel)
        f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        try:
            view = memoryview(data)
            while view:
                n = os.write(f, view)
                view = view[n:]
            os.fchmod(f, mode)
            os.fsync(f)
        except BaseException:
            os.close(f)
            f = -1
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
            raise
        finally:
            if f >= 0:
                os.close(f)

    def fsync_dir(self, rel_dir: str | bytes) -> None:
        os.fsync(self.dir(rel_dir))

    def fsync_dirs(self, rel_dirs: Iterable[str | bytes]) -> None:
        """``fsync_dir`` for many directories, in parallel so the disk batches the syncs."""
        fds = sorted({self.dir(d) for d in rel_dirs})
        if len(fds) <= 2:
            for fd in fds:
                os.fsync(fd)
            return
        with ThreadPoolExecutor(min(_SYNC_WORKERS, len(fds))) as pool:
            list(pool.map(os.fsync, fds))

    def write_many_new(self, items: Sequence[tuple[str | bytes, bytes, int]]) -> None:
        """``write_new`` for many files, in parallel so the fsyncs overlap. On the first failure the
        files this call created are removed again before the error propagates."""
        for rel, _, _ in items:
            self.parent(rel)  # open every handle here, not racing in the workers
        if len(items) <= 2:
            done: list[str | bytes] = []
            try:
                for rel, data, mode in items:
                    self.write_new(rel, data, mode)
                    done.append(rel)
            except BaseException:
                for rel in done:
                    self.unlink(rel)
                raise
            return
        with ThreadPoolExecutor(min(_SYNC_WORKERS, len(items))) as pool:
            futures = [pool.submit(self.write_new, *item) for item in items]
            errors = [f.exception() for f in futures]
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            for (rel, _, _), err in zip(items, errors, strict=True):
                if err is None:
                    self.unlink(rel)
            raise failed
