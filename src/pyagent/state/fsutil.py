"""Durable file primitives shared by commit and recovery: fsync helpers, atomic replace, the tree lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from typing import BinaryIO

from pyagent.state.errors import LockedError


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Makes creations, renames and unlinks inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str], *, mode: int | None = None, durable: bool = True, sync_dir: bool = True
) -> Iterator[BinaryIO]:
    """Streams into a temp file beside ``path`` and renames it over ``path`` only if the block succeeds.

    Readers see the old file or the whole new one, never a part; on failure the temp file is removed
    and ``path`` is untouched. ``mode`` None gives what ``open()`` would (0o666 less the umask);
    otherwise exactly ``mode``, and the temp file is created no more permissive than ``mode``, so a
    0o600 secret is never readable by others, not even for a moment. ``durable`` fsyncs the file and
    (when ``sync_dir``) the directory; callers writing many files pass ``sync_dir=False`` and
    ``fsync_dir`` once.
    """
    target = os.fspath(path)
    directory, name = os.path.split(target)
    directory = directory or "."
    fd, tmp = _create_temp(directory, name, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable and sync_dir:
        fsync_dir(directory)


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, mode: int | None = None, durable: bool = True, sync_dir: bool = True
) -> None:
    """Replaces ``path`` with ``data`` all or nothing; see ``atomic_writer`` for the options."""
    with atomic_writer(path, mode=mode, durable=durable, sync_dir=sync_dir) as fh:
        fh.write(data)


def _create_temp(directory: str, name: str, create_mode: int) -> tuple[int, str]:
    """A new, exclusive ``.NAME.PID.RANDOM.tmp`` in ``directory`` (hidden, and matched by ``.*.tmp`` sweeps)."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, create_mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", os.path.join(directory, f".{name}.*.tmp"))


def remove_quietly(path: str) -> bool:
    """Unlinks ``path``; True when something was removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class TreeLock:
    """An exclusive ``flock`` on ROOT/.pyagent/lock: one transaction (or recovery) per tree at a time.

    The kernel drops the lock when its holder dies, so a crashed transaction never blocks the next one.
    """

    def __init__(self, lock_path: str, root: str) -> None:
        self._path = lock_path
        self._root = root
        self._fd: int | None = None

    def acquire(self, timeout: float) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + max(timeout, 0.0)
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = ""
                    with contextlib.suppress(OSError):
                        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                    os.close(fd)
                    raise LockedError(self._root, holder) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
