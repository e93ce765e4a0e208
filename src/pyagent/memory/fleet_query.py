"""Fleet-wide queries: what one node answers from its replica, and how the answers are combined.

Each answer carries the clock stamp of every row, so combining answers from several nodes keeps,
for every key, the newest version (a newer tombstone hides an older row): the combination is
what a single store holding the merge of all the replicas would answer. Semantic search asks each
node for its own top ``k``; the fleet's top ``k`` is among them, so the merge is exact when every
node answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from pyagent.memory.crdt import decode_counters, materialize_value
from pyagent.memory.records import unpack_fact
from pyagent.memory.replica import ReplicaStore

__all__ = ["OPS", "FleetAnswer", "FleetQuery", "answer", "combine"]

OPS = ("fact", "facts", "search", "neighbours")
_MAX_K = 1000


@dataclass(frozen=True)
class FleetAnswer:
    """A combined result; ``missing`` names the peers that did not answer before the deadline."""

    op: str
    result: Any
    answered: tuple[str, ...] = ()
    missing: tuple[str, ...] = field(default=())
    errors: dict[str, str] = field(default_factory=dict)  # why each missing peer is missing

    @property
    def complete(self) -> bool:
        return not self.missing


class FleetQuery(Protocol):
    """What asks the fleet (the Voyager memory client); the memory layer knows no transport."""

    def query(self, op: str, args: Mapping[str, Any], *, timeout: float = 1.0) -> FleetAnswer: ...

    def close(self) -> None: ...


def _fact_record(key: str, hlc: str, deleted: bool, payload: bytes | None, counters: bytes) -> list[Any]:
    if deleted or payload is None:
        return [key, hlc, True, None, 0.0, 0, 0, []]
    raw, weight, last_used = msgpack.unpackb(payload, raw=False)
    value, created, provenance = unpack_fact(raw)
    value = materialize_value(value, decode_counters(counters))
    return [key, hlc, False, value, float(weight), int(created), int(last_used), list(provenance)]


def _text(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"query needs a non-empty string {name!r}")
    return value


def answer(replica: ReplicaStore, op: str, args: Mapping[str, Any]) -> Any:
    """This node's answer to one fleet query (plain msgpack-able lists)."""
    if not isinstance(args, Mapping):
        raise ValueError("query arguments must be a map")
    if op == "fact":
        key = _text(args, "key")
        entry = replica.entry("facts", (_text(args, "namespace"), key))
        return None if entry is None else _fact_record(key, *entry)
    if op == "facts":
        prefix = args.get("prefix", "")
        if not isinstance(prefix, str):
            raise ValueError("prefix must be a string")
        return [_fact_record(k, *e) for k, e in replica.entries("facts", _text(args, "namespace"), prefix)]
    if op == "search":
        k = args.get("k", 5)
        ns = args.get("namespace")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= _MAX_K:
            raise ValueError(f"k must be 1..{_MAX_K}")
        if ns is not None and not isinstance(ns, str):
            raise ValueError("namespace must be a string")
        hits = replica.store.search(_text(args, "text"), k, namespace=ns)
        out = []
        for h in hits:
            entry = replica.entry("docs", (h.namespace, h.key))
            out.append([h.namespace, h.key, h.text, h.score, entry.hlc if entry else ""])
        return out
    if op == "neighbours":
        direction = args.get("direction", "out")
        predicate = args.get("predicate")
        if predicate is not None and not isinstance(predicate, str):
            raise ValueError("predicate must be a string")
        edges = replica.store.neighbours(_text(args, "node"), predicate=predicate, direction=direction)
        out = []
        for e in edges:
            entry = replica.entry("edges", (e.subject, e.predicate, e.object))
            out.append([e.subject, e.predicate, e.object, e.weight, e.last_used_cycle, entry.hlc if entry else ""])
        return out
    raise ValueError(f"unknown fleet query {op!r}; one of {', '.join(OPS)}")


def _newest(rows: Iterable[list[Any]], width: int, stamp: int) -> dict[tuple[Any, ...], list[Any]]:
    best: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        key = tuple(row[:width])
        if key not in best or row[stamp] > best[key][stamp]:
            best[key] = row
    return best


def combine(op: str, answers: Iterable[Any], args: Mapping[str, Any]) -> Any:
    """The fleet's result from the nodes' answers (see the module docstring)."""
    answers = list(answers)
    if op == "fact":
        rows = [a for a in answers if a is not None]
        if not rows:
            return None
        row = max(rows, key=lambda r: r[1])
        return None if row[2] else row
    if op == "facts":
        best = _newest((r for a in answers for r in a), 1, 1)
        return [best[k] for k in sorted(best) if not best[k][2]]
    if op == "search":
        best = _newest((r for a in answers for r in a), 2, 4)
        k = int(args.get("k", 5))
        return sorted(best.values(), key=lambda r: (-r[3], r[0], r[1]))[:k]
    if op == "neighbours":
        best = _newest((r for a in answers for r in a), 3, 5)
        return [best[k] for k in sorted(best)]
    raise ValueError(f"unknown fleet query {op!r}")
