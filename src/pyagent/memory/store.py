"""KnowledgeStore: the "Knowledge Trinity" (structured facts, relations, semantic texts) in one SQLite file.

Why SQLite: one embedded file, crash-safe commits (WAL), B-tree indexes, concurrent readers while
a writer commits, and it ships with Python. Layout choices, all for speed:

- ``facts`` is a ``WITHOUT ROWID`` table keyed by ``(namespace, key)``: a lookup is one B-tree
  descent and a prefix query is one range scan. The cold metadata (created cycle and provenance)
  is packed into one msgpack ``origin`` column, because every column costs time on bulk load.
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
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgpack

from pyagent.memory.errors import StoreError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from pyagent.memory.embedders import Embedder
    from pyagent.memory.snapshot import SnapshotInfo

__all__ = ["FORMAT_VERSION", "MAX_WEIGHT", "TABLES", "Edge", "Fact", "Hit", "KnowledgeStore"]

FORMAT_VERSION = 1
MAX_WEIGHT = 1e9
_PAGE_SIZE = 16384
_BATCH = 500

# Column order of each table; snapshot records use exactly this order.
TABLES: dict[str, tuple[str, ...]] = {
    "facts": ("namespace", "key", "value", "weight", "last_used", "origin"),
    "edges": ("subject", "predicate", "object", "weight", "last_used"),
    "docs": ("namespace", "key", "text", "vector"),
}
# Primary key of each table (a prefix of its columns): snapshots read rows in this order.
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "facts": ("namespace", "key"),
    "edges": ("subject", "predicate", "object"),
    "docs": ("namespace", "key"),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS facts(
    namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    weight REAL NOT NULL, last_used INTEGER NOT NULL, origin BLOB NOT NULL,
    PRIMARY KEY(namespace, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edges(
    subject TEXT NOT NULL, predicate TEXT NOT NULL, object TEXT NOT NULL,
    weight REAL NOT NULL, last_used INTEGER NOT NULL,
    PRIMARY KEY(subject, predicate, object)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS docs(
    namespace TEXT NOT NULL, key TEXT NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY(namespace, key)) WITHOUT ROWID;
"""
# Secondary indexes are created after a bulk restore (faster than maintaining them row by row).
INDEXES = "CREATE INDEX IF NOT EXISTS edges_by_object ON edges(object, predicate, subject);"

_GET = "SELECT value FROM facts WHERE namespace = ? AND key = ?"
_PUT = (
    "INSERT INTO facts(namespace, key, value, weight, last_used, origin) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value, weight = excluded.weight, "
    "last_used = excluded.last_used, origin = excluded.origin"
)


@dataclass(frozen=True, slots=True)
class Fact:
    """One structured fact. ``weight`` is the stored weight as of ``last_used_cycle`` (undecayed).

    ``created_cycle`` is the cycle in which the current value was put (a put replaces the fact,
    value and provenance together). ``provenance`` is the task lineage that produced it.
    """

    namespace: str
    key: str
    value: Any
    weight: float
    created_cycle: int
    last_used_cycle: int
    provenance: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Edge:
    subject: str
    predicate: str
    object: str
    weight: float
    last_used_cycle: int


@dataclass(frozen=True, slots=True)
class Hit:
    """A semantic search result; ``score`` is the cosine similarity in [-1, 1]."""

    namespace: str
    key: str
    text: str
    score: float


def pack_value(value: Any, what: str) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"{what} cannot be stored: {exc}; values must be msgpack-encodable "
            "(None, bool, int, float, str, bytes, and lists/dicts of them)"
        ) from None


def unpack_value(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} {value!r} is not valid UTF-8 text: {exc}") from None
    return value


def _check_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ValueError(f"weight must be a number, got {weight!r}")
    w = float(weight)
    if not math.isfinite(w) or w < 0.0 or w > MAX_WEIGHT:
        raise ValueError(f"weight must be finite and within [0, {MAX_WEIGHT:g}], got {weight!r}")
    return w


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
    return conn


class KnowledgeStore:
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
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open knowledge store {self._path}: {exc}") from None
        try:
            self._init(synchronous)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"{self._path} is not a PyAgent knowledge store: {exc}") from None
        except StoreError:
            self._conn.close()
            raise
        self._cur = self._conn.cursor()

    def _init(self, synchronous: str) -> None:
        conn = self._conn
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            if self._readonly:
                raise StoreError(f"{self._path} is an empty database, not a PyAgent knowledge store")
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in (_SCHEMA + INDEXES).split(";"):
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
        _check_text("namespace", namespace)
        w = _check_weight(weight)
        lineage = [str(p) for p in provenance]
        pairs = items.items() if isinstance(items, Mapping) else items
        with self.batch():
            now = int(self._meta("cycle"))
            origin = msgpack.packb([now, lineage], use_bin_type=True)
            rows = [
                (namespace, _check_text("key", k), pack_value(v, f"value of fact {namespace}/{k}"), w, now, origin)
                for k, v in pairs
            ]
            self._conn.executemany(_PUT, rows)
        return len(rows)

    def get(self, namespace: str, key: str, default: Any = None) -> Any:
        """The value of a fact, or ``default`` when absent. A read does not count as a use."""
        with self._lock:
            row = self._cur.execute(_GET, (namespace, key)).fetchone()
        return default if row is None else unpack_value(row[0])

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the given keys that exist, in batches of 500 keys per SQL statement."""
        wanted = list(keys)
        out: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(wanted), _BATCH):
                chunk = wanted[start : start + _BATCH]
                sql = f"SELECT key, value FROM facts WHERE namespace = ? AND key IN ({','.join('?' * len(chunk))})"
                for k, raw in self._cur.execute(sql, (namespace, *chunk)).fetchall():
                    out[k] = unpack_value(raw)
        return out

    def fact(self, namespace: str, key: str) -> Fact | None:
        """The whole fact with its weight, cycles and provenance."""
        with self._lock:
            row = self._conn.execute(
                "SELECT namespace, key, value, weight, last_used, origin FROM facts "
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
        w = _check_weight(weight)
        with self.batch():
            cur = self._conn.execute(
                "UPDATE facts SET weight = ?, last_used = (SELECT value FROM meta WHERE key = 'cycle') "
                "WHERE namespace = ? AND key = ?",
                (w, namespace, key),
            )
        return cur.rowcount > 0

    def query(self, namespace: str, prefix: str = "", *, limit: int | None = None) -> list[Fact]:
        """Facts of a namespace whose key starts with ``prefix``, in key order (one index range scan)."""
        sql = "SELECT namespace, key, value, weight, last_used, origin FROM facts WHERE namespace = ?"
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
        sql = "SELECT namespace, key, value, weight, last_used, origin FROM facts"
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

    # -- relational ------------------------------------------------------------------------------

    def relate(self, subject: str, predicate: str, obj: str, weight: float = 1.0) -> None:
        """Add (or refresh) the edge subject -predicate-> object; last-used becomes now."""
        w = _check_weight(weight)
        row = (_check_text("subject", subject), _check_text("predicate", predicate), _check_text("object", obj), w)
        with self.batch():
            self._conn.execute(
                "INSERT INTO edges VALUES (?, ?, ?, ?, (SELECT value FROM meta WHERE key = 'cycle')) "
                "ON CONFLICT DO UPDATE SET weight = excluded.weight, last_used = excluded.last_used",
                row,
            )

    def unrelate(self, subject: str, predicate: str, obj: str) -> bool:
        with self.batch():
            cur = self._conn.execute(
                "DELETE FROM edges WHERE subject = ? AND predicate = ? AND object = ?", (subject, predicate, obj)
            )
        return cur.rowcount > 0

    def edge(self, subject: str, predicate: str, obj: str) -> Edge | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM edges WHERE subject = ? AND predicate = ? AND object = ?", (subject, predicate, obj)
            ).fetchone()
        return None if row is None else Edge(*row)

    def neighbours(
        self,
        node: str,
        *,
        predicate: str | None = None,
        direction: Literal["out", "in", "both"] = "out",
        limit: int | None = None,
    ) -> list[Edge]:
        """Edges leaving (``out``), entering (``in``) or touching (``both``) a node."""
        if direction not in ("out", "in", "both"):
            raise ValueError(f"direction must be 'out', 'in' or 'both', got {direction!r}")
        edges: list[Edge] = []
        with self._lock:
            for column in ("subject", "object"):
                if (column == "subject" and direction == "in") or (column == "object" and direction == "out"):
                    continue
                sql = f"SELECT * FROM edges WHERE {column} = ?"
                params: list[Any] = [node]
                if predicate is not None:
                    sql += " AND predicate = ?"
                    params.append(predicate)
                edges.extend(Edge(*r) for r in self._conn.execute(sql, params))
        return edges if limit is None else edges[:limit]

    def shortest_path(
        self,
        source: str,
        target: str,
        *,
        predicate: str | None = None,
        max_depth: int = 6,
        max_nodes: int = 100_000,
    ) -> list[Edge] | None:
        """A shortest directed path source -> target (breadth-first, level by level in SQL batches).

        Bounded: at most ``max_depth`` edges and ``max_nodes`` visited nodes. Returns the edges in
        order, ``[]`` when source == target, None when no path exists within the bounds.
        """
        if source == target:
            return []
        parent: dict[str, Edge] = {}
        seen = {source}
        frontier = [source]
        pred_sql = " AND predicate = ?" if predicate is not None else ""
        with self._lock:
            for _ in range(max_depth):
                next_frontier: list[str] = []
                for start in range(0, len(frontier), _BATCH):
                    chunk = frontier[start : start + _BATCH]
                    sql = f"SELECT * FROM edges WHERE subject IN ({','.join('?' * len(chunk))}){pred_sql}"
                    params = [*chunk, predicate] if predicate is not None else chunk
                    for row in self._conn.execute(sql, params):
                        edge = Edge(*row)
                        if edge.object in seen:
                            continue
                        seen.add(edge.object)
                        parent[edge.object] = edge
                        if edge.object == target:
                            return _walk_back(parent, source, target)
                        next_frontier.append(edge.object)
                        if len(seen) >= max_nodes:
                            return None
                if not next_frontier:
                    return None
                frontier = next_frontier
        return None

    # -- semantic --------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        """The store's embedder: the one its vectors were made with, else the one asked for."""
        with self._lock:
            if self._embedder is None:
                from pyagent.memory.embedders import resolve_embedder

                recorded = self._meta("embedder")
                if recorded is not None:
                    chosen = resolve_embedder(self._embedder_spec if self._embedder_spec is not None else recorded)
                    if chosen.name != recorded:
                        raise StoreError(
                            f"{self._path} holds vectors from embedder {recorded!r}; "
                            f"{chosen.name!r} was asked for and their scores cannot be compared"
                        )
                else:
                    chosen = resolve_embedder(self._embedder_spec)
                self._embedder = chosen
            return self._embedder

    def remember(self, namespace: str, key: str, text: str) -> None:
        """Store a text with its embedding under (namespace, key), replacing any previous one."""
        self.remember_many(namespace, [(key, text)])

    def remember_many(self, namespace: str, items: Iterable[tuple[str, str]]) -> int:
        _check_text("namespace", namespace)
        pairs = [(_check_text("key", k), t) for k, t in items]
        for _, t in pairs:
            if not isinstance(t, str):
                raise ValueError(f"text must be a string, got {t!r}")
        if not pairs:
            return 0
        embedder = self.embedder
        vectors = embedder.embed([t for _, t in pairs])
        with self.batch():
            if self._meta("embedder") is None:
                self._set_meta("embedder", embedder.name)
            self._conn.executemany(
                "INSERT OR REPLACE INTO docs VALUES (?, ?, ?, ?)",
                [(namespace, k, t, vectors[i].tobytes()) for i, (k, t) in enumerate(pairs)],
            )
        return len(pairs)

    def forget(self, namespace: str, key: str) -> bool:
        with self.batch():
            cur = self._conn.execute("DELETE FROM docs WHERE namespace = ? AND key = ?", (namespace, key))
        return cur.rowcount > 0

    def _doc_matrix(self) -> tuple[list[str], list[str], npt.NDArray[np.float32]]:
        import numpy as np

        version = (int(self._conn.execute("PRAGMA data_version").fetchone()[0]), self._doc_gen)
        if self._doc_cache is None or self._doc_cache[0] != version:
            rows = self._conn.execute("SELECT namespace, key, vector FROM docs").fetchall()
            dim = self.embedder.dim
            matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), dim)
            self._doc_cache = (version, [r[0] for r in rows], [r[1] for r in rows], matrix)
        _, nss, keys, matrix = self._doc_cache
        return nss, keys, matrix

    def search(self, text: str, k: int = 5, *, namespace: str | None = None) -> list[Hit]:
        """The ``k`` stored texts most similar to ``text`` by cosine similarity, best first."""
        import numpy as np

        if k <= 0:
            return []
        with self._lock:
            if self._meta("embedder") is None:
                return []
            nss, keys, matrix = self._doc_matrix()
            if not keys:
                return []
            query = self.embedder.embed([text])[0]
            scores = matrix @ query
            if namespace is not None:
                mask = np.fromiter((ns == namespace for ns in nss), dtype=bool, count=len(nss))
                scores = np.where(mask, scores, -np.inf)
            count = min(k, int(np.isfinite(scores).sum()))
            if count == 0:
                return []
            top = np.argpartition(-scores, count - 1)[:count]
            top = top[np.argsort(-scores[top], kind="stable")]
            picked = [(nss[i], keys[i], float(scores[i])) for i in top]
            hits = []
            for ns, key, score in picked:
                row = self._conn.execute(
                    "SELECT text FROM docs WHERE namespace = ? AND key = ?", (ns, key)
                ).fetchone()
                hits.append(Hit(ns, key, row[0] if row else "", score))
        return hits

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
    namespace, key, raw, weight, last_used, origin = row
    created, lineage = msgpack.unpackb(origin, raw=False)
    return Fact(namespace, key, unpack_value(raw), float(weight), int(created), int(last_used), tuple(lineage))


def _walk_back(parent: dict[str, Edge], source: str, target: str) -> list[Edge]:
    edges: list[Edge] = []
    node = target
    while node != source:
        edge = parent[node]
        edges.append(edge)
        node = edge.subject
    edges.reverse()
    return edges
