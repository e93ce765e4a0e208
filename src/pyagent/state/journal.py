"""The rollback journal: where a tree's originals live while a commit is in flight.

Layout under the workspace root (modelled on SQLite's rollback journal)::

    ROOT/.pyagent/lock              flock'ed by the transaction or recovery working on the tree
    ROOT/.pyagent/vault/journal     manifest + originals; its presence means "a commit is in flight"
    ROOT/.pyagent/vault/journal.tmp a journal being written (never trusted, deleted on sight)

A journal file holds ``MAGIC | u64 manifest length | msgpack manifest | original bytes... | blake3``.
It is written to ``journal.tmp``, fsynced and renamed into place (the vault directory fsynced) *before*
the first file of the tree changes, so a journal under its final name is always complete; a checksum
failure there means outside damage and is reported instead of trusted.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import blake3
import msgpack

from pyagent.state.beneath import RootDir
from pyagent.state.errors import JournalCorruptError

META_DIR = ".pyagent"
VAULT_DIR = "vault"
JOURNAL = "journal"
LOCK = "lock"
MAGIC = b"PYAGENT-JOURNAL\x01"
_LEN = struct.Struct("<Q")
_DIGEST = 32

MODIFY = "modify"
CREATE = "create"
DELETE = "delete"


@dataclass(frozen=True)
class Entry:
    """One file a commit touches. ``path`` and ``tmp`` are relative to the root, as raw OS bytes."""

    path: bytes
    action: str  # MODIFY | CREATE | DELETE
    orig_hash: str | None  # blake3 hex of the original (None for CREATE)
    orig_mode: int | None
    offset: int = 0  # where the original's bytes sit in the blob area
    length: int = 0
    tmp: bytes | None = None  # the staged new content, next to ``path``, until renamed over it
    new_hash: str | None = None


@dataclass
class Journal:
    txid: str
    entries: list[Entry]
    created_dirs: list[bytes] = field(default_factory=list)  # parents the commit made, outermost first
    blobs: bytes = b""

    def original(self, entry: Entry) -> bytes:
        return self.blobs[entry.offset : entry.offset + entry.length]


def vault_dir(root: str) -> str:
    return os.path.join(root, META_DIR, VAULT_DIR)


def journal_path(root: str) -> str:
    return os.path.join(vault_dir(root), JOURNAL)


VAULT_REL = f"{META_DIR}/{VAULT_DIR}"


def write_journal(rd: RootDir, txid: str, entries: list[Entry], originals: list[bytes],
                  created_dirs: list[bytes]) -> int:
    """Writes and fsyncs the journal, then renames it into place (this makes it hot). Returns its size.

    Goes through the vault's directory handle (no symlink followed). On any failure (a full disk
    included) ``journal.tmp`` is removed again before the error propagates: nothing is left behind.
    """
    manifest: dict[str, Any] = {
        "txid": txid,
        "created_dirs": created_dirs,
        "entries": [
            [e.path, e.action, e.orig_hash, e.orig_mode, e.offset, e.length, e.tmp, e.new_hash] for e in entries
        ],
    }
    head = msgpack.packb(manifest, use_bin_type=True)
    hasher = blake3.blake3()
    vault = rd.dir(VAULT_REL)
    tmp = JOURNAL + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=vault)
    size = 0
    try:
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20, closefd=False) as out:
                for chunk in (MAGIC, _LEN.pack(len(head)), head, *originals):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.write(hasher.digest())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, JOURNAL, src_dir_fd=vault, dst_dir_fd=vault)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=vault)
        raise
    os.fsync(vault)
    return size + _DIGEST


def read_journal(root: str) -> Journal | None:
    """The hot journal of ``root``, or None when no commit is in flight."""
    try:
        with open(journal_path(root), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    where = journal_path(root)
    if len(data) < len(MAGIC) + _LEN.size + _DIGEST or not data.startswith(MAGIC):
        raise JournalCorruptError(f"{where} is not a PyAgent journal; move it away to continue")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if blake3.blake3(body).digest() != digest:
        raise JournalCorruptError(
            f"{where} fails its checksum (damaged outside PyAgent); the tree may be half-changed: "
            "inspect it, then move the journal away"
        )
    (n,) = _LEN.unpack_from(body, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    manifest = msgpack.unpackb(body[start : start + n], raw=False)
    entries = [Entry(*row) for row in manifest["entries"]]
    return Journal(manifest["txid"], entries, list(manifest["created_dirs"]), body[start + n :])
