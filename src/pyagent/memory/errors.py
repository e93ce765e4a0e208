"""Errors of the knowledge store, each naming the file it is about."""

from __future__ import annotations

__all__ = ["SnapshotError", "StoreError"]


class StoreError(Exception):
    """The store file cannot be opened or used as asked (not a store, wrong format, exists, ...)."""


class SnapshotError(StoreError):
    """A snapshot is damaged or cannot be written; ``path`` names the offending shard or manifest."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
