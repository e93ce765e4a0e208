"""The knowledge store's SQLite schema: shared by the store and by snapshot restore, owned by neither."""

from __future__ import annotations

__all__ = ["FORMAT_VERSION", "INDEXES", "PRIMARY_KEYS", "SCHEMA", "TABLES"]

FORMAT_VERSION = 2

# Column order of each table; snapshot records use exactly this order.
TABLES: dict[str, tuple[str, ...]] = {
    "facts": ("namespace", "key", "value", "weight", "last_used"),
    "edges": ("subject", "predicate", "object", "weight", "last_used"),
    "docs": ("namespace", "key", "text", "vector"),
}
# Primary key of each table (a prefix of its columns): snapshots read rows in this order.
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "facts": ("namespace", "key"),
    "edges": ("subject", "predicate", "object"),
    "docs": ("namespace", "key"),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS facts(
    namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    weight REAL NOT NULL, last_used INTEGER NOT NULL,
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
