"""The relational part of the knowledge store: weighted edges, neighbours, bounded shortest paths."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

from pyagent.memory.records import BATCH, Edge, check_text, check_weight

__all__ = ["RelationsMixin"]


class RelationsMixin:
    """Edges (subject, predicate, object, weight) of a :class:`~pyagent.memory.store.KnowledgeStore`."""

    _conn: sqlite3.Connection
    _lock: threading.RLock

    if TYPE_CHECKING:

        def batch(self) -> AbstractContextManager[None]: ...

    def relate(self, subject: str, predicate: str, obj: str, weight: float = 1.0) -> None:
        """Add (or refresh) the edge subject -predicate-> object; last-used becomes now."""
        w = check_weight(weight)
        row = (check_text("subject", subject), check_text("predicate", predicate), check_text("object", obj), w)
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
                for start in range(0, len(frontier), BATCH):
                    chunk = frontier[start : start + BATCH]
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


def _walk_back(parent: dict[str, Edge], source: str, target: str) -> list[Edge]:
    edges: list[Edge] = []
    node = target
    while node != source:
        edge = parent[node]
        edges.append(edge)
        node = edge.subject
    edges.reverse()
    return edges
