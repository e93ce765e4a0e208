"""SQLite store for responses, their input items and their stream events.

Unlike an in-memory dict that grows forever, the store is bounded: every insert prunes responses older
than ``max_age_seconds`` and the oldest beyond ``max_responses`` (their items and events go with them
through ``ON DELETE CASCADE``). One connection guarded by a lock: the server's writes are small and
short, and SQLite serialises writers anyway.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    previous_response_id TEXT,
    body BLOB NOT NULL,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS responses_created ON responses(created_at);
CREATE TABLE IF NOT EXISTS input_items (
    response_id TEXT NOT NULL REFERENCES responses(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (response_id, position)
);
CREATE TABLE IF NOT EXISTS stream_events (
    response_id TEXT NOT NULL REFERENCES responses(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (response_id, seq)
);
"""


@dataclass(frozen=True)
class StoredResponse:
    id: str
    created_at: float
    status: str
    previous_response_id: str | None
    body: dict[str, Any]


class ResponseStore:
    """Persistent, bounded storage of responses (``path=":memory:"`` for a throwaway store)."""

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        max_responses: int = 10_000,
        max_age_seconds: float = 30 * 24 * 3600.0,
    ) -> None:
        if max_responses < 1:
            raise ValueError("max_responses must be at least 1")
        if max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be positive")
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.max_responses = max_responses
        self.max_age_seconds = max_age_seconds
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys=ON")
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(responses)")}
        if "owner" not in columns:  # a store written before responses had owners: they stay key-less
            self._db.execute("ALTER TABLE responses ADD COLUMN owner TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ writes

    def insert(self, body: dict[str, Any], input_items: Sequence[dict[str, Any]], *, owner: str = "") -> None:
        """Store a new response with its input items, then prune to the retention limits. Only reads
        naming the same ``owner`` (a digest of the creating API key) see it."""
        now = time.time()
        with self._lock, self._tx():
            self._db.execute(
                "INSERT INTO responses (id, created_at, status, previous_response_id, body, owner) "
                "VALUES (?,?,?,?,?,?)",
                (body["id"], now, body["status"], body.get("previous_response_id"), orjson.dumps(body), owner),
            )
            self._db.executemany(
                "INSERT INTO input_items (response_id, position, item_id, body) VALUES (?,?,?,?)",
                [(body["id"], i, item["id"], orjson.dumps(item)) for i, item in enumerate(input_items)],
            )
            self._prune(now)

    def update(self, body: dict[str, Any], events: Iterable[dict[str, Any]] = ()) -> bool:
        """Replace a response's body (final status) and append its stream events; False if it is gone."""
        with self._lock, self._tx():
            cur = self._db.execute(
                "UPDATE responses SET status=?, body=? WHERE id=?", (body["status"], orjson.dumps(body), body["id"])
            )
            if cur.rowcount == 0:
                return False
            self._db.executemany(
                "INSERT OR REPLACE INTO stream_events (response_id, seq, body) VALUES (?,?,?)",
                [(body["id"], ev["sequence_number"], orjson.dumps(ev)) for ev in events],
            )
            return True

    def delete(self, response_id: str, *, owner: str = "") -> bool:
        with self._lock, self._tx():
            cur = self._db.execute("DELETE FROM responses WHERE id=? AND owner=?", (response_id, owner))
            return cur.rowcount > 0

    # ------------------------------------------------------------ reads

    def get(self, response_id: str, *, owner: str = "") -> StoredResponse | None:
        """The response if it exists and belongs to ``owner``; another key's response is None, as if absent."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, created_at, status, previous_response_id, body FROM responses WHERE id=? AND owner=?",
                (response_id, owner),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], row[1], row[2], row[3], orjson.loads(row[4]))

    def input_items(self, response_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM input_items WHERE response_id=? ORDER BY position", (response_id,)
            ).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def list_input_items(
        self, response_id: str, *, after: str | None, limit: int, order: Literal["asc", "desc"]
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of input items after the cursor ``after`` (an item id); returns (items, has_more)."""
        items = self.input_items(response_id)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [it["id"] for it in items]
            if after not in ids:
                raise KeyError(after)
            items = items[ids.index(after) + 1 :]
        return items[:limit], len(items) > limit

    def events(self, response_id: str, starting_after: int = -1) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM stream_events WHERE response_id=? AND seq>? ORDER BY seq",
                (response_id, starting_after),
            ).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def chain(self, response_id: str, *, owner: str = "") -> list[StoredResponse]:
        """The conversation ending at ``response_id``, oldest first; KeyError names a missing link."""
        out: list[StoredResponse] = []
        seen: set[str] = set()
        current: str | None = response_id
        while current is not None:
            if current in seen:  # cannot happen through the API; guard against a hand-edited store
                raise KeyError(current)
            seen.add(current)
            stored = self.get(current, owner=owner)
            if stored is None:
                raise KeyError(current)
            out.append(stored)
            current = stored.previous_response_id
        out.reverse()
        return out

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    # ------------------------------------------------------------ internals

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def _prune(self, now: float) -> None:
        self._db.execute("DELETE FROM responses WHERE created_at < ?", (now - self.max_age_seconds,))
        self._db.execute(
            "DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY created_at DESC, rowid DESC "
            "LIMIT -1 OFFSET ?)",
            (self.max_responses,),
        )


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
