"""A node's content-addressed file store, so a project crosses the wire once per change.

The origin of a teleported task sends a manifest (path -> blake3 of the bytes) of the project;
the node keeps every blob it was sent under its hash, so later tasks of the same run only ship
the files that changed since. The store lives in a temporary folder for the life of the node.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import blake3

from pyagent.state.fsutil import atomic_write

_HASH = re.compile(r"^[0-9a-f]{64}$")


class BlobError(ValueError):
    """A blob whose bytes do not match its name, or a malformed hash or path."""


def blob_hash(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def check_relpath(path: str) -> str:
    """A manifest path must stay inside the work folder: relative, POSIX, no ``..``."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise BlobError(f"unsafe path in manifest: {path!r}")
    return path


class BlobStore:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self._owned = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="pyagent-node-blobs-"))
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        if not _HASH.match(digest):
            raise BlobError(f"not a blake3 hex digest: {digest[:80]!r}")
        return self.root / digest

    def has(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def missing(self, digests: Iterable[str]) -> list[str]:
        return sorted({d for d in digests if not self.has(d)})

    def put(self, digest: str, data: bytes) -> None:
        path = self._path(digest)
        if blob_hash(data) != digest:
            raise BlobError(f"blob {digest[:12]}… does not match its content")
        if path.exists():
            return
        atomic_write(path, data, durable=False)  # a cache: a blob lost in a crash is fetched again

    def materialize(self, manifest: Mapping[str, str], dest: Path) -> None:
        """Write the project described by ``manifest`` into ``dest`` (copies, never links)."""
        for rel, digest in manifest.items():
            target = dest / check_relpath(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._path(digest), target)

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)
