"""The replicated state of one node's KnowledgeStore, kept beside its tables in the same file.

- ``repl_items`` holds one :class:`~pyagent.memory.crdt.Entry` per row of ``facts``, ``edges``
  and ``docs`` (tombstones included), with the row's shard (:mod:`pyagent.memory.placement`).
- SQLite triggers put every changed key into ``repl_dirty``, so every writer of the file (the
  fleet's ``StoreKnowledge``, the pruning engine, ``pyagent memory``, another process) is
  replicated without being changed; dirty keys become entries with a fresh clock
  stamp before anything reads or merges the replicated state.
- ``repl_clock`` is the fleet's decay clock as a grow-only counter: each node's own ticks, merged
  by maximum; the store's ``cycle`` is their sum, so a tick counts once however often it arrives.

A shard's wire form is canonical msgpack of its entries in key order; its blake3 hash names it,
so two nodes holding the same entries of a shard have the same hash and exchange nothing.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import blake3
import msgpack

from pyagent.memory.crdt import Entry, decode_counters, encode_counters, increments, materialize_value, merge
from pyagent.memory.errors import StoreError
from pyagent.memory.hlc import HybridClock, parse_stamp
from pyagent.memory.placement import SHARDS, shard_of
from pyagent.memory.records import unpack_fact
from pyagent.memory.schema import PRIMARY_KEYS, TABLES
from pyagent.memory.store import KnowledgeStore

__all__ = ["REPLICATED", "ReplicaStore", "ShardError"]

REPLICATED = ("facts", "edges", "docs")
_EMPTY = encode_counters({})
_MAX_SHARD_BYTES = 64 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repl_items(
    tbl TEXT NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL, c TEXT NOT NULL, shard INTEGER NOT NULL,
    hlc TEXT NOT NULL, deleted INTEGER NOT NULL, payload BLOB, counters BLOB NOT NULL,
    PRIMARY KEY(tbl, a, b, c)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS repl_items_by_shard ON repl_items(shard);
CREATE TABLE IF NOT EXISTS repl_dirty(
    tbl TEXT NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL, c TEXT NOT NULL, old BLOB, had_old INTEGER NOT NULL,
    PRIMARY KEY(tbl, a, b, c)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS repl_clock(node TEXT PRIMARY KEY, ticks INTEGER NOT NULL) WITHOUT ROWID;
"""


def _key_sql(table: str, row: str) -> str:
    cols = [f"{row}.{c}" for c in PRIMARY_KEYS[table]]
    return ", ".join(cols + ["''"] * (3 - len(cols)))


def _mark(table: str, row: str, old_value: str, had_old: int) -> str:
    """One trigger statement: remember a key as changed, keeping the first old value seen.

    (``INSERT OR IGNORE`` would not do: inside a trigger the outer statement's conflict policy
    wins, and an upsert's is "fail".)
    """
    cols = [f"{row}.{c}" for c in PRIMARY_KEYS[table]] + ["''"] * (3 - len(PRIMARY_KEYS[table]))
    where = " AND ".join(f"{name} = {col}" for name, col in zip("abc", cols, strict=True))
    return (f"INSERT INTO repl_dirty SELECT '{table}', {', '.join(cols)}, {old_value}, {had_old} "
            f"WHERE NOT EXISTS (SELECT 1 FROM repl_dirty WHERE tbl = '{table}' AND {where});")


def _triggers() -> list[str]:
    out = []
    for t in REPLICATED:
        old_value = "OLD.value" if t == "facts" else "NULL"
        out += [
            f"CREATE TRIGGER IF NOT EXISTS repl_{t}_ins AFTER INSERT ON {t} BEGIN {_mark(t, 'NEW', 'NULL', 0)} END",
            f"CREATE TRIGGER IF NOT EXISTS repl_{t}_upd AFTER UPDATE ON {t} BEGIN "
            f"{_mark(t, 'OLD', old_value, 1)} {_mark(t, 'NEW', 'NULL', 0)} END",
            f"CREATE TRIGGER IF NOT EXISTS repl_{t}_del AFTER DELETE ON {t} BEGIN {_mark(t, 'OLD', old_value, 1)} END",
        ]
    return out


class ShardError(StoreError):
    """A shard from a peer was refused (hash mismatch or malformed); nothing of it was applied."""

    def __init__(self, message: str, peer: str) -> None:
        super().__init__(message)
        self.peer = peer


_PAYLOAD_COLS = {t: tuple(c for c in TABLES[t] if c not in PRIMARY_KEYS[t]) for t in REPLICATED}


def _payload_cols(table: str) -> tuple[str, ...]:
    return _PAYLOAD_COLS[table]


class ReplicaStore:
    """Replication state over a :class:`KnowledgeStore` (installs its tables and triggers on open)."""

    def __init__(self, store: KnowledgeStore, node_id: str) -> None:
        if store.readonly:
            raise StoreError(f"{store.path} is open read-only; replication needs to write")
        self.store = store
        self.node_id = node_id
        self._conn: sqlite3.Connection = store._conn
        self._hashes: dict[int, bytes] = {}
        self._sizes: dict[int, int] = {}
        self._hash_lock = threading.Lock()
        with store.batch():
            fresh = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'repl_items'").fetchone() is None
            for statement in [s for s in _SCHEMA.split(";") if s.strip()] + _triggers():
                self._conn.execute(statement)
            if fresh:  # rows written before replication existed become this node's writes
                for t in REPLICATED:
                    self._conn.execute(
                        f"INSERT OR IGNORE INTO repl_dirty SELECT '{t}', {_key_sql(t, t)}, NULL, 0 FROM {t}")
            self._conn.execute("INSERT OR IGNORE INTO repl_clock VALUES (?, (SELECT value FROM meta "
                               "WHERE key = 'cycle'))", (node_id,))
            if store.get_meta("repl_cycle_seen") is None:
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('repl_cycle_seen', "
                                   "(SELECT value FROM meta WHERE key = 'cycle'))")
            latest = self._conn.execute("SELECT max(hlc) FROM repl_items").fetchone()[0]
        self.clock = HybridClock(node_id, start=latest)

    # -- local writes ----------------------------------------------------------------------------

    def _stamp(self) -> int:
        """Stamp every dirty key: one joined read per table, then bulk writes (inside a batch)."""
        conn = self._conn
        total = 0
        for tbl in REPLICATED:
            pk = PRIMARY_KEYS[tbl]
            cols = _payload_cols(tbl)
            on = " AND ".join(f"t.{c} = d.{k}" for c, k in zip(pk, "abc", strict=False))
            rows = conn.execute(
                f"SELECT d.a, d.b, d.c, d.old, d.had_old, t.{pk[0]} IS NOT NULL, "
                f"{', '.join('t.' + c for c in cols)}, r.counters FROM repl_dirty d "
                f"LEFT JOIN {tbl} t ON {on} "
                "LEFT JOIN repl_items r ON r.tbl = d.tbl AND r.a = d.a AND r.b = d.b AND r.c = d.c "
                "WHERE d.tbl = ?", (tbl,)).fetchall()
            if not rows:
                continue
            total += len(rows)
            items = []
            counted = []
            width = len(pk)
            for row in rows:
                a, b, c, old, had_old, present = row[:6]
                current = row[6 : 6 + len(cols)] if present else None
                raw_counters = row[-1] if row[-1] is not None else _EMPTY
                if tbl == "facts" and current is not None:
                    before = unpack_fact(old)[0] if had_old and old is not None else None
                    raised = increments(before, unpack_fact(current[0])[0])
                    if raised:
                        counters = decode_counters(raw_counters)
                        for f, n in raised.items():
                            per = counters.setdefault(f, {})
                            per[self.node_id] = per.get(self.node_id, 0) + n
                        raw_counters = encode_counters(counters)
                payload = None if current is None else msgpack.packb(list(current), use_bin_type=True)
                key = (a, b, c)
                entry = Entry(self.clock.now(), current is None, payload, raw_counters)
                items.append((tbl, a, b, c, shard_of(tbl, key[:width]), entry.hlc, int(entry.deleted), payload,
                              raw_counters))
                if tbl == "facts" and current is not None and raw_counters != _EMPTY:
                    counted.append((key, entry))
            self._write_entries(items)
            self._materialize(tbl, counted)
        if total:
            conn.execute("DELETE FROM repl_dirty")
        self._sync_cycle()
        return total

    def _write_entries(self, items: list[tuple[Any, ...]]) -> None:
        self._conn.executemany("INSERT OR REPLACE INTO repl_items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", items)
        with self._hash_lock:
            for item in items:
                self._hashes.pop(item[4], None)

    def _entry(self, tbl: str, key: tuple[str, str, str]) -> Entry | None:
        row = self._conn.execute(
            "SELECT hlc, deleted, payload, counters FROM repl_items WHERE tbl = ? AND a = ? AND b = ? AND c = ?",
            (tbl, *key)).fetchone()
        return None if row is None else Entry(row[0], bool(row[1]), row[2], row[3])

    def _materialize(self, tbl: str, rows: list[tuple[tuple[str, str, str], Entry]]) -> None:
        """Make the table rows what the merged entries say (the triggers' marks are cleared by the caller)."""
        pk = PRIMARY_KEYS[tbl]
        width = len(pk)
        where = " AND ".join(f"{c} = ?" for c in pk)
        deletes: list[tuple[str, ...]] = []
        puts: list[tuple[Any, ...]] = []
        for key, entry in rows:
            if entry.deleted or entry.payload is None:
                deletes.append(key[:width])
                continue
            cols = list(msgpack.unpackb(entry.payload, raw=False))
            if tbl == "facts" and entry.counters != _EMPTY:
                value, created, provenance = unpack_fact(cols[0])
                counted = materialize_value(value, decode_counters(entry.counters))
                if counted != value:
                    cols[0] = msgpack.packb([counted, created, list(provenance)], use_bin_type=True)
            puts.append((*key[:width], *cols))
        if deletes:
            self._conn.executemany(f"DELETE FROM {tbl} WHERE {where}", deletes)
        if puts:
            self._conn.executemany(f"INSERT OR REPLACE INTO {tbl} VALUES ({', '.join('?' * len(TABLES[tbl]))})", puts)

    # -- the decay clock -------------------------------------------------------------------------

    def _sync_cycle(self) -> None:
        conn = self._conn
        cycle = int(conn.execute("SELECT value FROM meta WHERE key = 'cycle'").fetchone()[0])
        seen = int(conn.execute("SELECT value FROM meta WHERE key = 'repl_cycle_seen'").fetchone()[0])
        if cycle > seen:
            conn.execute("UPDATE repl_clock SET ticks = ticks + ? WHERE node = ?", (cycle - seen, self.node_id))
        fleet = int(conn.execute("SELECT coalesce(sum(ticks), 0) FROM repl_clock").fetchone()[0])
        if fleet != cycle:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'cycle'", (fleet,))
        if fleet != seen:  # no write (and no durable commit) when nothing changed: reads stamp too
            conn.execute("UPDATE meta SET value = ? WHERE key = 'repl_cycle_seen'", (fleet,))

    @contextlib.contextmanager
    def _fresh(self) -> Iterator[None]:
        """Hold the store's lock with every local write stamped, for reading.

        Stamps (a write transaction) only when something is dirty, so reads do not commit, and
        do not invalidate the store's cached vector matrix.
        """
        with self.store._lock:
            dirty = self._conn.execute(
                "SELECT EXISTS(SELECT 1 FROM repl_dirty) OR (SELECT value FROM meta WHERE key = 'cycle') "
                "IS NOT (SELECT value FROM meta WHERE key = 'repl_cycle_seen')").fetchone()[0]
            if dirty:
                with self.store.batch():
                    self._stamp()
            yield

    def clock_vector(self) -> dict[str, int]:
        with self._fresh():
            return {n: int(t) for n, t in self._conn.execute("SELECT node, ticks FROM repl_clock")}

    def merge_clock(self, vector: dict[str, int]) -> int:
        """Merge a peer's clock vector (maximum per node); returns the fleet cycle."""
        for node, ticks in vector.items():
            if not isinstance(node, str) or isinstance(ticks, bool) or not isinstance(ticks, int) or ticks < 0:
                raise ValueError(f"bad clock entry {node!r}: {ticks!r}")
        with self.store.batch():
            self._stamp()
            for node, ticks in vector.items():
                self._conn.execute("INSERT INTO repl_clock VALUES (?, ?) ON CONFLICT(node) DO UPDATE "
                                   "SET ticks = excluded.ticks WHERE excluded.ticks > ticks", (node, ticks))
            self._sync_cycle()
            return int(self._conn.execute("SELECT value FROM meta WHERE key = 'cycle'").fetchone()[0])

    # -- shards ----------------------------------------------------------------------------------

    def shard_hashes(self, shards: Iterable[int] | None = None) -> dict[int, bytes]:
        """blake3 of every held (non-empty) shard, or of the given ones that are held."""
        with self._fresh():
            held = [int(s) for (s,) in self._conn.execute("SELECT DISTINCT shard FROM repl_items")]
        wanted = set(held) if shards is None else set(held) & set(shards)
        out: dict[int, bytes] = {}
        for s in sorted(wanted):
            with self._hash_lock:
                cached = self._hashes.get(s)
            if cached is None:
                data = self.shard_bytes(s, stamped=True)
                cached = blake3.blake3(data).digest()
                with self._hash_lock:
                    self._hashes[s] = cached
                    self._sizes[s] = len(data)
            out[s] = cached
        return out

    def held_bytes(self) -> int:
        """The size of every held shard in wire form: what a full copy of this node would transfer."""
        held = self.shard_hashes()
        with self._hash_lock:
            return sum(self._sizes.get(s, 0) for s in held)

    def shard_bytes(self, shard: int, *, stamped: bool = False) -> bytes:
        """The canonical wire form of one shard (empty list when not held)."""
        with contextlib.nullcontext() if stamped else self._fresh(), self.store._lock:
            rows = self._conn.execute(
                "SELECT tbl, a, b, c, hlc, deleted, payload, counters FROM repl_items WHERE shard = ? "
                "ORDER BY tbl, a, b, c", (shard,)).fetchall()
        return msgpack.packb([shard, [list(r) for r in rows]], use_bin_type=True)

    def merge_shards(self, shards: Sequence[tuple[bytes, bytes]], *, peer: str,
                     embedder: str | None = None) -> tuple[int, list[ShardError]]:
        """Merge many (bytes, expected blake3) shards in one commit; returns entries changed and refusals.

        Each shard is verified and decoded before anything is written; a refused shard (hash
        mismatch, malformed, or texts whose vectors come from another embedder than this store's,
        ``embedder`` being the peer's) is left out whole and reported with the peer's name.
        """
        valid: list[tuple[int, list[tuple[str, tuple[str, str, str], Entry]]]] = []
        refused: list[ShardError] = []
        for data, expected in shards:
            digest = blake3.blake3(data).digest()
            if digest != expected:
                refused.append(ShardError(f"refused a shard from {peer}: its blake3 {digest.hex()[:16]} does not "
                                          f"match the advertised {expected.hex()[:16]}", peer))
                continue
            try:
                decoded = _decode_shard(data, peer)
            except ShardError as exc:
                refused.append(exc)
                continue
            if any(t == "docs" and not e.deleted for t, _k, e in decoded[1]):
                ours = self.store.get_meta("embedder") or self.store.embedder.name
                if embedder != ours:
                    refused.append(ShardError(f"refused a shard from {peer}: its texts are embedded with "
                                              f"{embedder!r}, this store's with {ours!r}", peer))
                    continue
            valid.append(decoded)
        if not valid:
            return 0, refused
        changed = 0
        with self.store.batch():
            self._stamp()
            for shard, entries in valid:
                local = {(r[0], r[1], r[2], r[3]): Entry(r[4], bool(r[5]), r[6], r[7]) for r in self._conn.execute(
                    "SELECT tbl, a, b, c, hlc, deleted, payload, counters FROM repl_items WHERE shard = ?", (shard,))}
                items = []
                newest = ""
                applied: dict[str, list[tuple[tuple[str, str, str], Entry]]] = {t: [] for t in REPLICATED}
                for tbl, key, remote in entries:
                    mine = local.get((tbl, *key))
                    merged = remote if mine is None else merge(mine, remote)
                    if merged == mine:
                        continue
                    newest = max(newest, merged.hlc)
                    items.append((tbl, *key, shard, merged.hlc, int(merged.deleted), merged.payload, merged.counters))
                    if tbl == "docs" and self.store.get_meta("embedder") is None and not merged.deleted:
                        self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('embedder', ?)",
                                           (self.store.embedder.name,))
                    applied[tbl].append((key, merged))
                if items:
                    for tbl, rows in applied.items():
                        self._materialize(tbl, rows)
                    self._write_entries(items)
                    self.clock.observe(newest)
                    changed += len(items)
            self._conn.execute("DELETE FROM repl_dirty")
        return changed, refused

    # -- reading ---------------------------------------------------------------------------------

    def entry(self, tbl: str, key: Sequence[str]) -> Entry | None:
        """The current entry of one key (local writes stamped first)."""
        full = (*key, *([""] * (3 - len(key))))
        with self._fresh():
            return self._entry(tbl, (full[0], full[1], full[2]))

    def entries(self, tbl: str, a: str, prefix: str = "") -> list[tuple[str, Entry]]:
        """(second key column, entry) of every entry of ``tbl`` whose first key column is ``a``."""
        with self._fresh():
            rows = self._conn.execute(
                "SELECT b, hlc, deleted, payload, counters FROM repl_items WHERE tbl = ? AND a = ? AND b >= ? "
                "ORDER BY b", (tbl, a, prefix)).fetchall()
        return [(r[0], Entry(r[1], bool(r[2]), r[3], r[4])) for r in rows if r[0].startswith(prefix)]

    def counts(self) -> dict[str, int]:
        """Live items, tombstones and held shards."""
        with self._fresh():
            live, dead, shards = self._conn.execute(
                "SELECT coalesce(sum(deleted = 0), 0), coalesce(sum(deleted), 0), count(DISTINCT shard) "
                "FROM repl_items").fetchone()
        return {"items": int(live), "tombstones": int(dead), "shards": int(shards)}


def _decode_shard(data: bytes, peer: str) -> tuple[int, list[tuple[str, tuple[str, str, str], Entry]]]:
    try:
        shard, rows = msgpack.unpackb(data, raw=False, max_bin_len=_MAX_SHARD_BYTES, max_str_len=_MAX_SHARD_BYTES)
        if not isinstance(shard, int) or not 0 <= shard < SHARDS or not isinstance(rows, list):
            raise ValueError("not a shard")
        out = []
        for row in rows:
            tbl, a, b, c, hlc, deleted, payload, counters = row
            if tbl not in REPLICATED or not all(isinstance(k, str) for k in (a, b, c)):
                raise ValueError(f"bad key {row[:4]!r}")
            width = len(PRIMARY_KEYS[tbl])
            key = (a, b, c)
            if not all(key[:width]) or any(key[width:]) or shard_of(tbl, key[:width]) != shard:
                raise ValueError(f"key {key!r} does not belong to shard {shard}")
            parse_stamp(hlc)
            if not isinstance(deleted, bool | int) or not isinstance(counters, bytes):
                raise ValueError("bad entry")
            if counters != _EMPTY:
                decode_counters(counters)
            if deleted:
                if payload is not None:
                    raise ValueError("a tombstone carries no columns")
            else:
                cols = msgpack.unpackb(payload, raw=False) if isinstance(payload, bytes) else None
                if not isinstance(cols, list) or len(cols) != len(_payload_cols(tbl)):
                    raise ValueError(f"bad columns for {tbl}")
                if tbl == "facts":
                    unpack_fact(cols[0])
            out.append((tbl, key, Entry(hlc, bool(deleted), payload, counters)))
        return shard, out
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise ShardError(f"refused a malformed shard from {peer}: {exc}", peer) from None
