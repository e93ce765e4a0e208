"""The semantic part of the knowledge store: texts with embedding vectors, top-k cosine search."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.memory.errors import StoreError
from pyagent.memory.records import Hit, check_text

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from pyagent.memory.embedders import Embedder

__all__ = ["SemanticMixin"]


class SemanticMixin:
    """Texts and their vectors; search is one NumPy matrix product over a cached matrix.

    The matrix is rebuilt when this process wrote texts or another connection committed
    (``PRAGMA data_version``).
    """

    _conn: sqlite3.Connection
    _lock: threading.RLock
    _path: Path
    _embedder_spec: str | Embedder | None
    _embedder: Embedder | None
    _doc_cache: tuple[tuple[int, int], list[str], list[str], npt.NDArray[np.float32]] | None
    _doc_gen: int

    if TYPE_CHECKING:

        def batch(self) -> AbstractContextManager[None]: ...

        def _meta(self, key: str) -> Any: ...

        def _set_meta(self, key: str, value: Any) -> None: ...

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
        check_text("namespace", namespace)
        pairs = [(check_text("key", k), t) for k, t in items]
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
