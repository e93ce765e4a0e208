"""Knowledge store at 1,000,000 facts: key lookups vs. a dict, snapshot + restore vs. json and pickle.

Targets: snapshot + restore at least 3x faster than json dump + load of the same data; at least
100,000 key lookups per second. Run: ``python benchmarks/memory.py [--facts N] [--lookups N]``.

What the numbers mean:

- ``get``: one ``KnowledgeStore.get(namespace, key)`` per key: one prepared SQL point query on
  the (namespace, key) B-tree of the committed on-disk store, plus msgpack decoding of the value.
  The anchor is ``dict[(namespace, key)]`` on already-decoded values held in memory.
  ``get_many`` fetches 500 keys per SQL statement (what a planner checking many files uses).
- snapshot + restore: ours reads the whole store from SQLite, writes blake3-hashed msgpack shards
  and a manifest (every file fsynced), then verifies every hash and builds a new, indexed,
  queryable SQLite store. The anchors only serialise the same records (already in memory as
  Python objects) to one file (fsynced) and parse them back into Python objects: they do less
  work than we do and produce no store, so the ratio is conservative.
- All in one run, one process, same data. The machine may be shared: absolute numbers move,
  ratios move less.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pyagent.memory.store import KnowledgeStore

NAMESPACES = ("pyagent.failures", "pyagent.files", "pyagent.routes", "notes")


def _facts(n: int) -> dict[str, list[tuple[str, Any]]]:
    rng = random.Random(7)
    out: dict[str, list[tuple[str, Any]]] = {ns: [] for ns in NAMESPACES}
    for i in range(n):
        ns = NAMESPACES[i % len(NAMESPACES)]
        key = f"src/pkg{i % 97:02d}/module_{i:07d}.py"
        value = {"hash": f"{rng.getrandbits(64):016x}", "count": i, "ok": i % 3 == 0,
                 "reason": f"tests failed: test_{i % 1000} AssertionError"}
        out[ns].append((key, value))
    return out


CPU: dict[str, float] = {}


def _timed(fn: Any, label: str = "") -> tuple[float, Any]:
    """Wall seconds (the verdict) and, under ``label``, CPU seconds of this process (less load-sensitive)."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if label:
        CPU[label] = time.process_time() - cpu
    return time.perf_counter() - start, result


def _dump_load(path: Path, records: list[dict[str, Any]], fmt: str) -> tuple[float, int]:
    """Dump the records to one fsynced file and load them back; (seconds, file size)."""
    def run() -> int:
        if fmt == "json":
            with open(path, "w", encoding="utf-8") as f:
                json.dump(records, f)
                f.flush()
                os.fsync(f.fileno())
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
        else:
            with open(path, "wb") as f:
                pickle.dump(records, f, protocol=pickle.HIGHEST_PROTOCOL)
                f.flush()
                os.fsync(f.fileno())
            with open(path, "rb") as f:
                loaded = pickle.load(f)
        return len(loaded)

    seconds, count = _timed(run, fmt)
    assert count == len(records)
    return seconds, path.stat().st_size


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def _lookups(store: KnowledgeStore, data: dict[str, list[tuple[str, Any]]], n: int, lookups_n: int) -> None:
    """Random key lookups: dict, store.get, store.get_many."""
    anchor = {(ns, k): v for ns, items in data.items() for k, v in items}
    rng = random.Random(11)
    all_keys = list(anchor)
    probes = [all_keys[rng.randrange(len(all_keys))] for _ in range(lookups_n)]
    dict_s, _ = _timed(lambda: [anchor[p] for p in probes], "dict")
    get = store.get
    get_s, got = _timed(lambda: [get(ns, k) for ns, k in probes], "get")
    assert got == [anchor[p] for p in probes]
    by_ns: dict[str, list[str]] = {}
    for ns, k in probes:
        by_ns.setdefault(ns, []).append(k)
    many_s, many = _timed(lambda: [store.get_many(ns, keys) for ns, keys in by_ns.items()], "get_many")
    assert sum(len(m) for m in many) == len(set(probes))
    lookups = lookups_n
    print(f"\nkey lookups ({lookups:,} random keys of {n:,})")
    print(f"  python dict          {lookups / dict_s:>14,.0f} /s")
    print(f"  store.get            {lookups / get_s:>14,.0f} /s   (dict is {get_s / dict_s:,.0f}x faster)")
    print(f"  store.get_many(500)  {lookups / many_s:>14,.0f} /s   (dict is {many_s / dict_s:,.0f}x faster)")
    print(f"  per CPU-second of this process: dict {lookups / CPU['dict']:,.0f}, get {lookups / CPU['get']:,.0f}, "
          f"get_many {lookups / CPU['get_many']:,.0f}")
    print(f"  target >= 100,000/s (wall): get {'MET' if lookups / get_s >= 100_000 else 'MISSED'}, "
          f"get_many {'MET' if lookups / many_s >= 100_000 else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--dir", help="work directory (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="pyagent-bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    n = args.facts
    try:
        data = _facts(n)
        store = KnowledgeStore(work / "memory.db", synchronous="normal")
        load_s, _ = _timed(lambda: [store.put_many(ns, items, provenance=("root-1", "task-2"))
                                    for ns, items in data.items()])
        print(f"{n:,} facts loaded into the store in {load_s:.2f} s ({n / load_s:,.0f} facts/s, "
              f"{(work / 'memory.db').stat().st_size / 1e6:.0f} MB)")

        _lookups(store, data, n, args.lookups)
        data = {}  # free the anchor data before the snapshot part
        gc.collect()

        # -- snapshot + restore --------------------------------------------------------------------
        snap_s, info = _timed(lambda: store.snapshot(work / "snap"), "snapshot")
        restore_s, restored = _timed(lambda: KnowledgeStore.restore(work / "snap", work / "restored.db"), "restore")
        assert restored.counts()["facts"] == n and info.counts["facts"] == n
        probe = store.query("pyagent.files", "src/pkg42/", limit=1)[0]
        assert restored.get(probe.namespace, probe.key) == probe.value
        restored.close()
        ours_s = snap_s + restore_s
        ours_bytes = _dir_size(work / "snap")
        # The anchors' data: the same facts as Python objects (built after our run, so that our
        # run does not pay for the garbage collector walking a million dicts).
        records = [
            {"namespace": f.namespace, "key": f.key, "value": f.value, "weight": f.weight,
             "created_cycle": f.created_cycle, "last_used_cycle": f.last_used_cycle,
             "provenance": list(f.provenance)}
            for f in store.iter_facts()
        ]
        json_s, json_bytes = _dump_load(work / "facts.json", records, "json")
        pickle_s, pickle_bytes = _dump_load(work / "facts.pickle", records, "pickle")
        print(f"\nsnapshot + restore of {n:,} facts ({info.shards} shards)")
        print(f"  ours   {ours_s:7.2f} s  (snapshot {snap_s:.2f} + verify and restore {restore_s:.2f})"
              f"  {ours_bytes / 1e6:7.1f} MB")
        print(f"  json   {json_s:7.2f} s  (dump + load)                               {json_bytes / 1e6:7.1f} MB"
              f"   ours is {json_s / ours_s:.2f}x faster, {json_bytes / ours_bytes:.2f}x smaller")
        print(f"  pickle {pickle_s:7.2f} s  (dump + load)                               {pickle_bytes / 1e6:7.1f} MB"
              f"   ours is {pickle_s / ours_s:.2f}x faster, {pickle_bytes / ours_bytes:.2f}x smaller")
        ours_cpu = CPU["snapshot"] + CPU["restore"]
        print(f"  CPU seconds of this process: ours {ours_cpu:.2f}, json {CPU['json']:.2f} "
              f"({CPU['json'] / ours_cpu:.2f}x), pickle {CPU['pickle']:.2f} ({CPU['pickle'] / ours_cpu:.2f}x)")
        print(f"  target >= 3x faster than json (wall): {'MET' if json_s / ours_s >= 3 else 'MISSED'}")

        # -- incremental snapshot ------------------------------------------------------------------
        records = []
        gc.collect()
        store.put_many("pyagent.failures", [(f"new/{i}.py", {"i": i}) for i in range(100)])
        inc_s, inc = _timed(lambda: store.snapshot(work / "snap"))
        print(f"\nsnapshot after 100 new facts: {inc_s:.2f} s, {inc.shards_written} shards written, "
              f"{inc.shards_reused} reused (vs {snap_s:.2f} s for the first)")
        store.close()
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
