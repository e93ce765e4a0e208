"""Read-side views of a store for people and tools: summary statistics and a JSON-lines export."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Any

import orjson

from pyagent.memory.pruning import NeuralPruningEngine
from pyagent.memory.snapshot import list_snapshots
from pyagent.memory.store import Edge, Fact, KnowledgeStore

__all__ = ["edge_record", "export_lines", "fact_record", "fleet_summary", "stats"]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"$base64": base64.b64encode(bytes(obj)).decode("ascii")}
    raise TypeError(f"cannot export {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """JSON with bytes as ``{"$base64": ...}`` (msgpack values may hold bytes, JSON cannot)."""
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def fact_record(fact: Fact, engine: NeuralPruningEngine, now: int) -> dict[str, Any]:
    return {
        "type": "fact",
        "namespace": fact.namespace,
        "key": fact.key,
        "value": fact.value,
        "weight": engine.decayed(fact.weight, now - fact.last_used_cycle),
        "stored_weight": fact.weight,
        "created_cycle": fact.created_cycle,
        "last_used_cycle": fact.last_used_cycle,
        "provenance": list(fact.provenance),
    }


def edge_record(edge: Edge, engine: NeuralPruningEngine, now: int) -> dict[str, Any]:
    return {
        "type": "edge",
        "subject": edge.subject,
        "predicate": edge.predicate,
        "object": edge.object,
        "weight": engine.decayed(edge.weight, now - edge.last_used_cycle),
        "last_used_cycle": edge.last_used_cycle,
    }


def export_lines(store: KnowledgeStore) -> Iterator[bytes]:
    """Every fact, edge and text (without its vector) as one JSON object per line, current weights."""
    engine = NeuralPruningEngine(store, persist=False)
    now = store.cycle
    for fact in store.iter_facts():
        yield dumps(fact_record(fact, engine, now)) + b"\n"
    for row in store.read_rows("SELECT * FROM edges ORDER BY subject, predicate, object"):
        yield dumps(edge_record(Edge(*row), engine, now)) + b"\n"
    for ns, key, text in store.read_rows("SELECT namespace, key, text FROM docs ORDER BY namespace, key"):
        yield dumps({"type": "text", "namespace": ns, "key": key, "text": text}) + b"\n"


def stats(store: KnowledgeStore, snapshots_root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Counts, cycle, settings, file sizes and the snapshots found next to the store."""
    engine = NeuralPruningEngine(store, persist=False)
    size = sum(
        os.path.getsize(p) for p in (store.path, f"{store.path}-wal") if os.path.exists(p)
    )
    snaps = list_snapshots(snapshots_root) if snapshots_root is not None else []
    return {
        "store": str(store.path),
        "bytes": size,
        "cycle": store.cycle,
        "counts": store.counts(),
        "namespaces": dict(sorted(store.namespaces().items())),
        "embedder": store.get_meta("embedder"),
        "pruning": orjson.loads(engine.params.to_json()),
        "prunable_now": engine.prune(dry_run=True).facts,
        "snapshots": [str(p) for p in snaps],
    }


def fleet_summary(nodes: list[dict[str, Any]], missing: list[str]) -> dict[str, Any]:
    """``pyagent memory status --fleet``: per node items and lag, and the fleet's replication factor.

    A shard's replication factor is the number of nodes holding an identical copy of it (the
    largest group of equal blake3 hashes); the fleet's is the minimum over its shards.
    """
    copies: dict[int, dict[bytes, int]] = {}
    for node in nodes:
        for shard, digest in node.get("hashes", []):
            group = copies.setdefault(int(shard), {})
            group[digest] = group.get(digest, 0) + 1
    factors = {s: max(g.values()) for s, g in copies.items()}
    target = min((int(n.get("replicas", 1)) for n in nodes), default=1)
    wanted = min(target, len(nodes)) if nodes else 0
    rows = []
    for node in sorted(nodes, key=lambda n: str(n.get("name"))):
        ages = [p["last_sync_s"] for p in node.get("peers", {}).values() if p.get("last_sync_s") is not None]
        rows.append({
            "name": node.get("name"), "node_id": node.get("node_id"), "items": node.get("items", 0),
            "tombstones": node.get("tombstones", 0), "shards": node.get("shards", 0), "owned": node.get("owned", 0),
            "lag": node.get("behind", 0), "last_sync_s": max(ages) if ages else None, "cycle": node.get("cycle"),
            "bytes_fetched": node.get("bytes_fetched", 0), "refused": node.get("refused", []),
        })
    return {
        "nodes": rows,
        "missing": list(missing),
        "target": target,
        "shards": len(factors),
        "min_replication": min(factors.values(), default=0),
        "under_replicated": sum(1 for f in factors.values() if f < wanted),
    }
