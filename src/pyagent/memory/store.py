"""KnowledgeStore: the "Knowledge Trinity" (structured facts, relations, semantic texts) in one SQLite file.

Why SQLite: one embedded file, crash-safe commits (WAL), B-tree indexes, concurrent readers while
a writer commits, and it ships with Python. Layout choices, all for speed:

- ``facts`` is a ``WITHOUT ROWID`` table keyed by ``(namespace, key)``: a lookup is one B-tree
  descent and a prefix query is one range scan. Its ``value`` blob is the msgpack array
  ``[value, created cycle, provenance]``: one column instead of three, because every column costs
  about 15% on bulk load (restore); ``weight`` and ``last_used`` stay columns for pruning in SQL.
- Weights decay *lazily*: a row stores the weight as of its last use and that cycle; the pruning
  engine derives the current weight from the idle time (see :mod:`pyagent.memory.pruning`), so a
  tick never rewrites idle rows.
- ``edges`` has a second index on ``(object, predicate, subject)`` for incoming neighbours.
- ``docs`` holds texts with float32 vectors; search is a NumPy matrix product over a cached matrix.

A *cycle* is one fleet execution cycle: one task reaching a final state in ``FleetExecutionCore``
(the store's persistent ``cycle`` counter is advanced by ``NeuralPruningEngine.tick``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pyagent.memory.errors import StoreError
from pyagent.memory.records import (
    BATCH,
    MAX_WEIGHT,
    Edge,
    Fact,
    Hit,
    _unpackb,
    check_text,
    check_weight,
    origin_tail,
    pack_fact,
    unpack_fact,
    unpack_value,
)
from pyagent.memory.relations import RelationsMixin
from pyagent.memory.schema import FORMAT_VERSION, INDEXES, SCHEMA, TABLES
from pyagent.memory.semantic import SemanticMixin

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from pyagent.memory.embedders import Embedder
    from pyagent.memory.snapshot import SnapshotInfo

__all__ = ["FORMAT_VERSION", "MAX_WEIGHT", "TABLES", "Edge", "Fact", "Hit", "KnowledgeStore"]

_PAGE_SIZE = 16384
_MMAP_SIZE = 1 << 30

_GET = "SELECT value FROM facts WHERE namespace = ? AND key = ?"
_PUT = (
    "INSERT INTO facts(namespace, key, value, weight, last_used) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value, weight = excluded.weight, "
    "last_used = excluded.last_used"
)


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix`` (None: no bound).

    SQLite compares TEXT with memcmp on UTF-8, which orders like code points, so incrementing the
    last code point (skipping the surrogate gap) bounds the range.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1])
        if code < 0x10FFFF:
            code += 1
            if 0xD800 <= code <= 0xDFFF:
                code = 0xE000
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def connect(path: str | os.PathLike[str], *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with a generous busy timeout."""
    if readonly:
        uri = Path(os.fspath(path)).resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0)
    else:
        conn = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA busy_timeout = 10000")
    # Memory-mapped reads: a lookup walks B-tree pages straight from the OS page cache instead of
    # a pread() per page (about 1.8x more random lookups per second on a 1M-fact store).
    conn.execute(f"PRAGMA mmap_size = {_MMAP_SIZE}")
    conn.execute("PRAGMA cache_size = -32768")
    return conn


class KnowledgeStore(RelationsMixin, SemanticMixin):
    """Facts, relations and semantic texts of the swarm in one SQLite file (WAL mode).

    Thread-safe (one connection behind a lock); several processes may open the same file (SQLite's
    WAL locking). Every write is committed before the call returns; ``batch()`` groups many writes
    into one commit. ``synchronous="full"`` (default) makes a commit survive power loss, ``"normal"``
    only a crash of the process, and is faster.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        embedder: str | Embedder | None = None,
        synchronous: Literal["full", "normal"] = "full",
        readonly: bool = False,
    ) -> None:
        self._path = Path(os.fspath(path))
        self._readonly = readonly
        self._lock = threading.RLock()
        self._depth = 0
        self._embedder_spec = embedder
        self._embedder: Embedder | None = None
        self._doc_cache: tuple[tuple[int, int], list[str], list[str], npt.NDArray[np.float32]] | None = None
        self._doc_gen = 0
        if readonly and not self._path.is_file():
            raise StoreError(f"no knowledge store at {self._path}")
        if not readonly:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        try:
            self._conn = connect(self._path, readonly=readonly)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot open knowledge store {self._path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self._path} is not a PyAgent knowledge store: {exc}") from None
        try:
            self._init(synchronous)
        except sqlite3.OperationalError as exc:  # locked, read-only file system, I/O error
            self._conn.close()
            raise StoreError(f"cannot open knowledge store {self._path}: {exc}") from None
        except sqlite3.DatabaseError as exc:  # "file is not a database", corruption
            self._conn.close()
            raise StoreError(f"{self._path} is not a PyAgent knowledge store: {exc}") from None
        except StoreError:
            self._conn.close()
            raise
        self._cur = self._conn.cursor()
        self._execute = self._cur.execute

    def _init(self, synchronous: str) -> None:
        conn = self._conn
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            if self._readonly:
                raise StoreError(f"{self._path} is an empty database, not a PyAgent knowledge store")
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in (SCHEMA + INDEXES).split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('format_version', ?)", (FORMAT_VERSION,))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('cycle', 0)")
            conn.execute("COMMIT")
        elif "meta" not in tables or "facts" not in tables:
            raise StoreError(
                f"{self._path} is a SQLite database but not a PyAgent knowledge store "
                f"(tables: {', '.join(sorted(tables))})"
            )
        row = conn.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
        if row is None or row[0] != FORMAT_VERSION:
            raise StoreError(
                f"{self._path} has knowledge-store format {row[0] if row else 'unknown'}, "
                f"this PyAgent reads format {FORMAT_VERSION}"
            )
        if not self._readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def readonly(self) -> bool:
        return self._readonly

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> KnowledgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group writes into one transaction: all of them are committed, or none on an exception."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            self._conn.execute("COMMIT")
            self._doc_gen += 1

    def _meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> Any:
        """A value from the store's small key/value settings table (None when absent)."""
        with self._lock:
            return self._meta(key)

    def set_meta(self, key: str, value: str | int | float | None) -> None:
        with self.batch():
            self._set_meta(key, value)

    @property
    def cycle(self) -> int:
        """The number of fleet execution cycles this store has seen (persistent)."""
        with self._lock:
            return int(self._meta("cycle"))

    def advance(self, cycles: int = 1) -> int:
        """Advance the cycle counter (the pruning engine's clock); returns the new cycle."""
        if cycles < 0:
            raise ValueError(f"cycles must be >= 0, got {cycles}")
        with self.batch():
            now = int(self._meta("cycle")) + cycles
            self._set_meta("cycle", now)
        return now

    # -- structured facts ------------------------------------------------------------------------

    def put(
        self,
        namespace: str,
        key: str,
        value: Any,
        weight: float = 1.0,
        *,
        provenance: Sequence[str] = (),
    ) -> None:
        """Store (or replace) a fact; its created and last-used cycle become the current cycle."""
        self.put_many(namespace, [(key, value)], weight=weight, provenance=provenance)

    def put_many(
        self,
        namespace: str,
        items: Iterable[tuple[str, Any]] | Mapping[str, Any],
        *,
        weight: float = 1.0,
        provenance: Sequence[str] = (),
    ) -> int:
        """Store many facts of one namespace in one commit; returns how many."""
        check_text("namespace", namespace)
        w = check_weight(weight)
        lineage = [str(p) for p in provenance]
        pairs = items.items() if isinstance(items, Mapping) else items
        with self.batch():
            now = int(self._meta("cycle"))
            tail = origin_tail(now, lineage)
            rows = [
                (namespace, check_text("key", k), pack_fact(v, tail, f"value of fact {namespace}/{k}"), w, now)
                for k, v in pairs
            ]
            self._conn.executemany(_PUT, rows)
        return len(rows)

    def get(self, namespace: str, key: str, default: Any = None) -> Any:
        """The value of a fact, or ``default`` when absent. A read does not count as a use.

        One prepared point query on the (namespace, key) B-tree; the hot path, kept lean.
        """
        with self._lock:
            row = self._execute(_GET, (namespace, key)).fetchone()
        if row is None:
            return default
        return _unpackb(row[0], raw=False, strict_map_key=False)[0]

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the given keys that exist, in batches of 500 keys per SQL statement."""
        wanted = list(keys)
        out: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(wanted), BATCH):
                chunk = wanted[start : start + BATCH]
                sql = f"SELECT key, value FROM facts WHERE namespace = ? AND key IN ({','.join('?' * len(chunk))})"
                for k, raw in self._cur.execute(sql, (namespace, *chunk)).fetchall():
                    out[k] = unpack_value(raw)
        return out

    def fact(self, namespace: str, key: str) -> Fact | None:
        """The whole fact with its weight, cycles and provenance."""
        with self._lock:
            row = self._conn.execute(
                "SELECT namespace, key, value, weight, last_used FROM facts "
                "WHERE namespace = ? AND key = ?",
                (namespace, key),
            ).fetchone()
        return None if row is None else _fact(row)

    def delete(self, namespace: str, key: str) -> bool:
        with self.batch():
            cur = self._conn.execute("DELETE FROM facts WHERE namespace = ? AND key = ?", (namespace, key))
        return cur.rowcount > 0

    def touch(self, namespace: str, key: str, weight: float) -> bool:
        """Set a fact's weight and mark it used now (idleness reset); False when absent."""
        w = check_weight(weight)
        with self.batch():
            cur = self._conn.execute(
                "UPDATE facts SET weight = ?, last_used = (SELECT value FROM meta WHERE key = 'cycle') "
                "WHERE namespace = ? AND key = ?",
                (w, namespace, key),
            )
        return cur.rowcount > 0

    def query(self, namespace: str, prefix: str = "", *, limit: int | None = None) -> list[Fact]:
        """Facts of a namespace whose key starts with ``prefix``, in key order (one index range scan)."""
        sql = "SELECT namespace, key, value, weight, last_used FROM facts WHERE namespace = ?"
        params: list[Any] = [namespace]
        if prefix:
            sql += " AND key >= ?"
            params.append(prefix)
            end = prefix_end(prefix)
            if end is not None:
                sql += " AND key < ?"
                params.append(end)
        sql += " ORDER BY key"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_fact(r) for r in rows]

    def namespaces(self) -> dict[str, int]:
        """Fact count per namespace."""
        with self._lock:
            rows = self._conn.execute("SELECT namespace, count(*) FROM facts GROUP BY namespace").fetchall()
        return {ns: int(n) for ns, n in rows}

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {t: int(self._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}

    def iter_facts(self, namespace: str | None = None) -> Iterator[Fact]:
        """Every fact (of one namespace), read from a consistent point-in-time view, in key order."""
        sql = "SELECT namespace, key, value, weight, last_used FROM facts"
        params: tuple[Any, ...] = ()
        if namespace is not None:
            sql += " WHERE namespace = ?"
            params = (namespace,)
        for row in self.read_rows(sql + " ORDER BY namespace, key", params):
            yield _fact(row)

    def read_rows(self, sql: str, params: Sequence[Any] = (), *, chunk: int = 8192) -> Iterator[tuple[Any, ...]]:
        """Rows of a query from a separate connection inside one read transaction (WAL snapshot)."""
        for rows in self.read_chunks([(sql, params)], chunk=chunk):
            yield from rows[1]

    def read_chunks(
        self, queries: Sequence[tuple[str, Sequence[Any]]], *, chunk: int = 8192
    ) -> Iterator[tuple[int, list[tuple[Any, ...]]]]:
        """(query index, rows) chunks of several queries, all read from one consistent view."""
        conn = connect(self._path, readonly=True)
        try:
            conn.execute("BEGIN")
            for index, (sql, params) in enumerate(queries):
                cur = conn.execute(sql, tuple(params))
                while rows := cur.fetchmany(chunk):
                    yield index, rows
            conn.execute("COMMIT")
        finally:
            conn.close()

    # -- weights (used by the pruning engine) ----------------------------------------------------

    def prune_weights(
        self,
        effective: Callable[[float, int], float],
        threshold: float,
        *,
        changed_every: int | None = None,
        dry_run: bool = False,
    ) -> dict[str, int]:
        """Delete facts and edges whose current weight ``effective(weight, idle)`` is below ``threshold``.

        With ``changed_every=H`` only rows whose idle time is a positive multiple of ``H`` are
        examined: under lazy decay those are the only rows whose weight changed since the last
        cycle, so a per-cycle pass stays cheap. Returns the number of rows deleted (with
        ``dry_run``: that would be deleted) per table.
        """
        removed: dict[str, int] = {}
        with contextlib.nullcontext() if dry_run else self.batch(), self._lock:
            self._conn.create_function("pa_effective", 2, effective, deterministic=True)
            now = int(self._meta("cycle"))
            for table in ("facts", "edges"):
                where = "pa_effective(weight, ? - last_used) < ?"
                params: tuple[Any, ...] = (now, threshold)
                if changed_every:
                    where = f"last_used < ? AND (? - last_used) % ? = 0 AND {where}"
                    params = (now, now, changed_every, *params)
                if dry_run:
                    removed[table] = int(self._conn.execute(f"SELECT count(*) FROM {table} WHERE {where}",
                                                            params).fetchone()[0])
                else:
                    cur = self._conn.execute(f"DELETE FROM {table} WHERE {where}", params)
                    removed[table] = max(cur.rowcount, 0)
        return removed

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot(
        self, directory: str | os.PathLike[str], *, reuse_from: Sequence[str | os.PathLike[str]] = ()
    ) -> SnapshotInfo:
        """Write a blake3-verified shard snapshot of the whole store into ``directory``."""
        from pyagent.memory.snapshot import write_snapshot

        return write_snapshot(self, directory, reuse_from=reuse_from)

    @classmethod
    def restore(
        cls, snapshot_dir: str | os.PathLike[str], path: str | os.PathLike[str], **kwargs: Any
    ) -> KnowledgeStore:
        """Verify every shard of a snapshot, then build a new store at ``path`` (which must not exist)."""
        from pyagent.memory.snapshot import restore_snapshot

        restore_snapshot(snapshot_dir, path)
        return cls(path, **kwargs)


def _fact(row: tuple[Any, ...]) -> Fact:
    namespace, key, raw, weight, last_used = row
    value, created, lineage = unpack_fact(raw)
    return Fact(namespace, key, value, float(weight), created, int(last_used), lineage)
