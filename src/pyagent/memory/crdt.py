"""The merge rules of the replicated knowledge store (a state-based CRDT), as pure functions.

Every row of ``facts``, ``edges`` and ``docs`` is one :class:`Entry` keyed by its table and
primary key. Two entries for the same key merge by these rules:

- **Values: last writer wins** by hybrid-logical-clock stamp (:mod:`pyagent.memory.hlc`). The
  row's columns (a fact's value, weight and last-used cycle; an edge's weight; a text and its
  vector) travel together, and a delete is a *tombstone* entry that wins the same way. A route's
  weight is such a value: each node reinforces or weakens the fleet's latest weight, so learning
  is sequential across the fleet; of two truly concurrent updates the later stamp wins.
- **Counters: per-node maxima, summed.** The integer fields ``count``, ``successes`` and
  ``failures`` of a fact's value are grow-only counters: each node keeps how many increments it
  made itself, merge takes the maximum per node, and the value shows the sum over nodes. So
  concurrent failures on two nodes are both counted, and receiving the same update twice counts
  it once. Counters survive a tombstone (a count is the fleet's total history of that key).
- Ties (same stamp) fall back to comparing the encoded payload, so every replica picks the same
  winner and the merge is commutative, associative and idempotent (property-tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import msgpack

__all__ = ["COUNTER_FIELDS", "Counters", "Entry", "decode_counters", "encode_counters", "increments",
           "materialize_value", "merge", "merge_counters"]

COUNTER_FIELDS = ("count", "successes", "failures")

Counters = dict[str, dict[str, int]]  # field -> node id -> that node's increments


class Entry(NamedTuple):
    """One replicated row: its stamp, whether it is a tombstone, its packed columns, its counters."""

    hlc: str
    deleted: bool
    payload: bytes | None
    counters: bytes  # canonical msgpack of Counters (sorted keys), b"\x80" when empty


def encode_counters(counters: Mapping[str, Mapping[str, int]]) -> bytes:
    """Canonical bytes (sorted keys, no zero counts, no empty maps) so equal counters hash equally."""
    canonical = {f: dict(sorted((n, c) for n, c in per.items() if c)) for f, per in sorted(counters.items())}
    canonical = {f: per for f, per in canonical.items() if per}
    return msgpack.packb(canonical, use_bin_type=True)


def decode_counters(raw: bytes) -> Counters:
    data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    if not isinstance(data, dict):
        raise ValueError("counters must be a map")
    out: Counters = {}
    for f, per in data.items():
        if not isinstance(f, str) or not isinstance(per, dict):
            raise ValueError("counters must map a field to a map of node to count")
        for node, n in per.items():
            if not isinstance(node, str) or isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"bad counter {f}/{node!r}: {n!r}")
        out[f] = dict(per)
    return out


def merge_counters(a: Counters, b: Counters) -> Counters:
    out: Counters = {f: dict(per) for f, per in a.items()}
    for f, per in b.items():
        mine = out.setdefault(f, {})
        for node, n in per.items():
            if n > mine.get(node, 0):
                mine[node] = n
    return out


def merge(a: Entry, b: Entry) -> Entry:
    """The merge of two entries of one key (commutative, associative, idempotent)."""
    win = a if (a.hlc, a.deleted, a.payload or b"") >= (b.hlc, b.deleted, b.payload or b"") else b
    counters = a.counters if a.counters == b.counters else encode_counters(
        merge_counters(decode_counters(a.counters), decode_counters(b.counters)))
    return Entry(win.hlc, win.deleted, win.payload, counters)


def increments(old: Any, new: Any) -> dict[str, int]:
    """How much a local write raised each counter field of a fact's value.

    A field that went down means the fact was re-created (forgotten, then seen again): its new
    value counts as fresh increments.
    """
    if not isinstance(new, dict):
        return {}
    out: dict[str, int] = {}
    for f in COUNTER_FIELDS:
        n = new.get(f)
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            continue
        before = old.get(f) if isinstance(old, dict) else None
        before = before if isinstance(before, int) and not isinstance(before, bool) else 0
        delta = n - before if n >= before else n
        if delta > 0:
            out[f] = delta
    return out


def materialize_value(value: Any, counters: Counters) -> Any:
    """A fact's value as the fleet sees it: counter fields replaced by their sums over nodes."""
    if not isinstance(value, dict) or not counters:
        return value
    out = dict(value)
    for f, per in counters.items():
        if f in COUNTER_FIELDS and per:
            out[f] = sum(per.values())
    return out
