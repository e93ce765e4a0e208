"""Errors raised by transactions; each names what went wrong and what to do about it."""

from __future__ import annotations


class TransactionError(Exception):
    """A transaction could not be staged, committed or recovered."""


class ConflictError(TransactionError):
    """A file changed on disk after the transaction read it; committing would lose that update."""

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        msg = f"{path} changed on disk since this transaction read it; nothing was written, read it again and redo the change"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class LockedError(TransactionError):
    """Another transaction holds the tree's lock."""

    def __init__(self, root: str, holder: str = "") -> None:
        self.root = root
        who = f" (held by pid {holder})" if holder else ""
        super().__init__(f"another transaction is working on {root}{who}; try again when it has finished")


class JournalCorruptError(TransactionError):
    """A complete journal failed its checksum: the vault was damaged outside PyAgent."""


class UnsafePathError(TransactionError):
    """A path leads through a symlink (or names no regular file); PyAgent never writes through links."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        super().__init__(f"{path} {why}; nothing was written")
