"""Binary shard snapshots of a KnowledgeStore: msgpack records, blake3-verified, content-addressed.

Layout of a snapshot directory::

    DIR/manifest.json         first line "pyagent-knowledge-snapshot blake3=<hash of the rest>",
                              then JSON: format version, counts, store settings, every shard's
                              file, blake3, size and record count, per table
    DIR/shards/<blake3>.shard msgpack {"table", "columns", "records": [[...], ...]}

Why it is safe and cheap:

- Shards are cut at *content-defined* boundaries (after a record whose key's CRC-32 has its low
  12 bits zero: about 4,096 records per shard, at most 16,384), so inserting or changing a few
  facts changes only the shards that hold them; every other shard has the same bytes, hence the
  same name, and is reused (kept in place, or hard-linked from an earlier snapshot) instead of
  being written and fsynced again.
- Every file is written to a temporary name, fsynced and renamed; the manifest is written last
  (temp + fsync + ``os.replace`` + directory fsync). A writer killed at any point leaves the
  previous manifest and all the shards it names in place; stale shards are deleted only after
  the new manifest is durable.
- :func:`restore_snapshot` reads and verifies the manifest and every shard (size and blake3)
  before it writes anything, builds the new database under a temporary name and links it into
  place only if the target path does not exist: it never writes over a store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import blake3
import msgpack
import orjson

from pyagent.memory.errors import SnapshotError, StoreError
from pyagent.memory.schema import FORMAT_VERSION, INDEXES, PRIMARY_KEYS, SCHEMA, TABLES
from pyagent.state.fsutil import atomic_write, fsync_dir


class SnapshotSource(Protocol):
    """What snapshots need of a store (``pyagent.memory.store.KnowledgeStore``, which imports this module)."""

    @property
    def cycle(self) -> int: ...

    def read_chunks(
        self, queries: Sequence[tuple[str, Sequence[Any]]], *, chunk: int = ...
    ) -> Iterator[tuple[int, list[tuple[Any, ...]]]]: ...

    def snapshot(
        self, directory: str | os.PathLike[str], *, reuse_from: Sequence[str | os.PathLike[str]] = ...
    ) -> SnapshotInfo: ...

__all__ = [
    "MANIFEST",
    "SNAPSHOT_VERSION",
    "SnapshotInfo",
    "SnapshotPolicy",
    "latest_snapshot",
    "list_snapshots",
    "restore_snapshot",
    "verify_snapshot",
    "write_snapshot",
]

MANIFEST = "manifest.json"
SHARDS = "shards"
SNAPSHOT_FORMAT = "pyagent-knowledge-snapshot"
SNAPSHOT_VERSION = 2
_BOUNDARY_MASK = 0xFFF  # a record ends a shard when crc32(key) & mask == 0: ~4,096 records per shard
_MAX_RECORDS = 16384
_WRITERS = 4
_MANIFEST_TAG = f"{SNAPSHOT_FORMAT} blake3="


@dataclass(frozen=True)
class SnapshotInfo:
    """What a snapshot wrote: counts per table and how many shard files were new or reused."""

    directory: Path
    cycle: int
    counts: dict[str, int]
    shards: int
    shards_written: int
    shards_reused: int
    bytes: int
    seconds: float = 0.0
    files: tuple[str, ...] = field(default=(), repr=False)


# -- durable file helpers ------------------------------------------------------------------------


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- writing -------------------------------------------------------------------------------------


def _cuts(table: str, rows: list[tuple[Any, ...]]) -> list[int]:
    """Indexes of the rows that end a shard: their key's CRC-32 has its low bits zero."""
    crc, mask = zlib.crc32, _BOUNDARY_MASK
    if table in ("facts", "docs"):  # keyed by (namespace, key): the key alone decides
        return [i for i, row in enumerate(rows) if not crc(row[1].encode("utf-8")) & mask]
    width = len(PRIMARY_KEYS[table])
    return [i for i, row in enumerate(rows) if not crc("\x00".join(row[:width]).encode("utf-8")) & mask]


def _split(records: list[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    for start in range(0, len(records), _MAX_RECORDS):
        yield records[start : start + _MAX_RECORDS]


def _iter_shards(store: SnapshotSource, meta_out: dict[str, Any]) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(table, records) for every shard, all read from one consistent view of the store."""
    names = list(TABLES)
    queries: list[tuple[str, Sequence[Any]]] = [
        (f"SELECT {', '.join(TABLES[t])} FROM {t} ORDER BY {', '.join(PRIMARY_KEYS[t])}", ()) for t in names
    ]
    queries.append(("SELECT key, value FROM meta ORDER BY key", ()))
    pending: list[tuple[Any, ...]] = []
    current = -1
    for index, rows in store.read_chunks(queries, chunk=16384):
        if index == len(names):
            meta_out.update(dict(rows))
            continue
        if index != current:
            if pending:
                for piece in _split(pending):
                    yield names[current], piece
            pending, current = [], index
        cuts = _cuts(names[index], rows)
        start = 0
        for cut in cuts:
            pending.extend(rows[start : cut + 1])
            for piece in _split(pending):
                yield names[index], piece
            pending, start = [], cut + 1
        pending.extend(rows[start:])
    if pending:
        for piece in _split(pending):
            yield names[current], piece


def _encode_shard(table: str, records: list[tuple[Any, ...]]) -> bytes:
    return msgpack.packb(
        {"table": table, "columns": list(TABLES[table]), "records": records}, use_bin_type=True
    )


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def write_snapshot(
    store: SnapshotSource,
    directory: str | os.PathLike[str],
    *,
    reuse_from: Sequence[str | os.PathLike[str]] = (),
) -> SnapshotInfo:
    """Write a snapshot of ``store`` into ``directory`` (created, or updated in place).

    Shards whose bytes already exist in ``directory`` or in one of the ``reuse_from`` snapshot
    directories are kept or hard-linked, not rewritten. Readers and writers of the store carry on
    meanwhile: the snapshot is one consistent point-in-time view (a WAL read transaction).
    """
    started = time.perf_counter()
    root = Path(os.fspath(directory))
    shard_dir = root / SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    with _dir_lock(root):
        for stale in shard_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        sources = [Path(os.fspath(d)) / SHARDS for d in reuse_from]
        meta: dict[str, Any] = {}
        tables: dict[str, dict[str, Any]] = {t: {"columns": list(TABLES[t]), "records": 0, "shards": []} for t in TABLES}
        written = reused = total_bytes = 0
        files: list[str] = []
        # Shards are packed and hashed here; writing and fsyncing them (which release the GIL and
        # let the file system batch journal commits) overlap in a few threads.
        with ThreadPoolExecutor(max_workers=_WRITERS) as pool:
            pending: list[Future[None]] = []
            for table, records in _iter_shards(store, meta):
                data = _encode_shard(table, records)
                digest = blake3.blake3(data).hexdigest()
                name = f"{digest}.shard"
                target = shard_dir / name
                if _same_bytes(target, data) or any(_link_if_same(src / name, target, data) for src in sources):
                    reused += 1
                else:
                    # the directory is fsynced once, after all shards
                    pending.append(pool.submit(atomic_write, target, data, sync_dir=False))
                    written += 1
                entry = {"file": f"{SHARDS}/{name}", "blake3": digest, "bytes": len(data), "records": len(records)}
                tables[table]["shards"].append(entry)
                tables[table]["records"] += len(records)
                total_bytes += len(data)
                files.append(name)
            for future in pending:
                future.result()
        if written:
            fsync_dir(shard_dir)
        counts = {t: int(tables[t]["records"]) for t in TABLES}
        body = {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "store_format": FORMAT_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cycle": int(meta.get("cycle", 0)),
            "meta": {k: v for k, v in meta.items() if k != "format_version"},
            "counts": counts,
            "tables": tables,
        }
        manifest = _encode_manifest(body)
        atomic_write(root / MANIFEST, manifest)
        keep = set(files)
        for old in shard_dir.iterdir():
            if old.name not in keep:
                old.unlink(missing_ok=True)
    return SnapshotInfo(
        directory=root,
        cycle=int(meta.get("cycle", 0)),
        counts=counts,
        shards=len(files),
        shards_written=written,
        shards_reused=reused,
        bytes=total_bytes + len(manifest),
        seconds=time.perf_counter() - started,
        files=tuple(files),
    )


def _link_if_same(source: Path, target: Path, data: bytes) -> bool:
    """Hard-link an identical shard from an earlier snapshot (checked byte for byte first)."""
    if not _same_bytes(source, data):
        return False
    try:
        target.unlink(missing_ok=True)
        os.link(source, target)
    except OSError:
        return False
    return True


def _encode_manifest(body: dict[str, Any]) -> bytes:
    payload = orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return f"{_MANIFEST_TAG}{blake3.blake3(payload).hexdigest()}\n".encode() + payload


# -- verifying and restoring ---------------------------------------------------------------------


def read_manifest(snapshot_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a snapshot, after checking its own hash and structure."""
    path = Path(os.fspath(snapshot_dir)) / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"no snapshot manifest at {path}", str(path)) from None
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot manifest {path}: {exc}", str(path)) from None
    head, sep, payload = raw.partition(b"\n")
    tag = head.decode("ascii", "replace")
    if not sep or not tag.startswith(_MANIFEST_TAG):
        raise SnapshotError(f"snapshot manifest {path} is damaged: bad header line", str(path))
    if blake3.blake3(payload).hexdigest() != tag[len(_MANIFEST_TAG) :]:
        raise SnapshotError(f"snapshot manifest {path} is damaged: blake3 mismatch", str(path))
    try:
        body = orjson.loads(payload)
        if body["format"] != SNAPSHOT_FORMAT:
            raise ValueError(f"format {body['format']!r}")
        if body["version"] != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {body['version']}, this PyAgent reads {SNAPSHOT_VERSION}")
        for table in TABLES:
            spec = body["tables"][table]
            if list(spec["columns"]) != list(TABLES[table]):
                raise ValueError(f"columns of {table} differ: {spec['columns']}")
            for entry in spec["shards"]:
                name = f"{entry['blake3']}.shard"
                if entry["file"] != f"{SHARDS}/{name}" or not all(c in "0123456789abcdef" for c in entry["blake3"]):
                    raise ValueError(f"bad shard entry {entry!r}")
                int(entry["bytes"]), int(entry["records"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot manifest {path} is damaged: {exc}", str(path)) from None
    result: dict[str, Any] = body
    return result


def verify_snapshot(snapshot_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Check the manifest and every shard (present, exact size, blake3); return them, verified.

    Raises :class:`SnapshotError` naming the first damaged file.
    """
    root = Path(os.fspath(snapshot_dir))
    manifest = read_manifest(root)
    shards: dict[str, bytes] = {}
    for table in TABLES:
        for entry in manifest["tables"][table]["shards"]:
            if entry["file"] in shards:
                continue
            path = root / entry["file"]
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise SnapshotError(f"snapshot shard {path} is missing", str(path)) from None
            except OSError as exc:
                raise SnapshotError(f"cannot read snapshot shard {path}: {exc}", str(path)) from None
            if len(data) != entry["bytes"]:
                raise SnapshotError(
                    f"snapshot shard {path} is truncated or damaged: {len(data)} bytes, "
                    f"the manifest says {entry['bytes']}",
                    str(path),
                )
            if blake3.blake3(data).hexdigest() != entry["blake3"]:
                raise SnapshotError(f"snapshot shard {path} is corrupted: blake3 mismatch", str(path))
            shards[entry["file"]] = data
    return manifest, shards


def _store_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def restore_snapshot(snapshot_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> dict[str, int]:
    """Build a new store at ``path`` from a verified snapshot; returns the record counts.

    Refuses when ``path`` (or its WAL files) exists: a restore never replaces a live store.
    """
    target = Path(os.fspath(path))
    for existing in _store_files(target):
        if existing.exists():
            raise StoreError(f"refusing to restore over {existing}: it exists; restore into a new path")
    root = Path(os.fspath(snapshot_dir))
    manifest, shards = verify_snapshot(root)  # every hash checked before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_restores(target)
    tmp = target.with_name(f".{target.name}.restore-{os.getpid()}.tmp")
    for leftover in _store_files(tmp):
        leftover.unlink(missing_ok=True)
    try:
        counts = _build(tmp, root, manifest, shards)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target)  # atomic, and fails if something appeared at target meanwhile
        except FileExistsError:
            raise StoreError(f"refusing to restore over {target}: it appeared during the restore") from None
        fsync_dir(target.parent)
    finally:
        for leftover in _store_files(tmp):
            leftover.unlink(missing_ok=True)
    return counts


def _remove_dead_restores(target: Path) -> None:
    """Delete temporary files of earlier restores to ``target`` whose process is gone (killed)."""
    for leftover in target.parent.glob(f".{target.name}.restore-*.tmp*"):
        pid_text = leftover.name[len(f".{target.name}.restore-") :].split(".", 1)[0]
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            leftover.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue  # not ours to judge: a malformed name, or another user's live process


def _build(tmp: Path, root: Path, manifest: dict[str, Any], shards: dict[str, bytes]) -> dict[str, int]:
    conn = sqlite3.connect(os.fspath(tmp), isolation_level=None)
    try:
        conn.execute("PRAGMA page_size = 16384")
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        conn.execute("BEGIN")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        counts: dict[str, int] = {}
        for table, columns in TABLES.items():
            insert = f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})"
            counts[table] = 0
            for entry in manifest["tables"][table]["shards"]:
                path = root / entry["file"]
                try:
                    shard = msgpack.unpackb(shards[entry["file"]], raw=False, use_list=False)
                    if shard["table"] != table or list(shard["columns"]) != list(columns):
                        raise ValueError(f"holds {shard['table']!r} records, expected {table!r}")
                    records = shard["records"]
                    if len(records) != entry["records"]:
                        raise ValueError(f"{len(records)} records, the manifest says {entry['records']}")
                    conn.executemany(insert, records)
                except (ValueError, TypeError, KeyError, msgpack.UnpackException, sqlite3.Error) as exc:
                    raise SnapshotError(f"snapshot shard {path} cannot be restored: {exc}", str(path)) from None
                counts[table] += len(records)
            if counts[table] != manifest["counts"][table]:
                raise SnapshotError(
                    f"snapshot manifest {root / MANIFEST} counts {manifest['counts'][table]} {table}, "
                    f"the shards hold {counts[table]}",
                    str(root / MANIFEST),
                )
        for statement in INDEXES.split(";"):
            if statement.strip():
                conn.execute(statement)
        meta = dict(manifest["meta"])
        meta["format_version"] = FORMAT_VERSION
        meta.setdefault("cycle", manifest["cycle"])
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", sorted(meta.items()))
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    return counts


# -- periodic snapshots --------------------------------------------------------------------------


def list_snapshots(root: str | os.PathLike[str]) -> list[Path]:
    """Complete snapshots (those with a manifest) under ``root``, oldest first."""
    base = Path(os.fspath(root))
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.name.startswith("snap-") and (p / MANIFEST).is_file())


def latest_snapshot(root: str | os.PathLike[str]) -> Path | None:
    found = list_snapshots(root)
    return found[-1] if found else None


class SnapshotPolicy:
    """Snapshot every ``every`` cycles into ``root/snap-<cycle>``, keeping the last ``keep``.

    Each new snapshot hard-links the shards it shares with the previous one, so a periodic snapshot
    of a store that changed a little writes only the shards that changed.
    """

    def __init__(self, root: str | os.PathLike[str], *, every: int = 100, keep: int = 3) -> None:
        if every < 1 or keep < 1:
            raise ValueError(f"every and keep must be >= 1, got every={every}, keep={keep}")
        self.root = Path(os.fspath(root))
        self.every = every
        self.keep = keep

    def due(self, cycle: int) -> bool:
        return cycle > 0 and cycle % self.every == 0

    def on_cycle(self, store: SnapshotSource, cycle: int | None = None) -> SnapshotInfo | None:
        """Call once per fleet execution cycle; snapshots when the cycle is a multiple of ``every``."""
        now = store.cycle if cycle is None else cycle
        return self.take(store) if self.due(now) else None

    def take(self, store: SnapshotSource) -> SnapshotInfo:
        self.root.mkdir(parents=True, exist_ok=True)
        previous = list_snapshots(self.root)
        target = self.root / f"snap-{store.cycle:012d}"
        info = store.snapshot(target, reuse_from=[p for p in previous[-1:] if p != target])
        for incomplete in self.root.glob("snap-*"):
            if incomplete.is_dir() and incomplete != target and not (incomplete / MANIFEST).exists():
                shutil.rmtree(incomplete, ignore_errors=True)
        for old in list_snapshots(self.root)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return info
