"""Holographic memory on three real node processes (127.0.0.1): fan-out queries and replication.

Run: ``python benchmarks/fleet_memory.py [--facts N] [--queries N]``. In one run it starts three
``pyagent node --memory`` processes (mDNS, CurveZMQ), then measures:

- **fan-out query latency** (p50/p99): a fleet-wide fact lookup and a fleet-wide semantic search
  asked from a client process (every node answers over the authenticated transport, the answers
  are merged), against the anchor: the same lookup/search on one local store.
- **replication throughput** (facts/s): N facts committed into node A's store until every shard
  of them is held, identical, by at least R=2 nodes (as ``pyagent memory status --fleet``
  computes it), against the anchor: a local bulk insert of the same facts into a plain store.
  The writer's cost of replication (its triggers) is shown too: the same insert into a
  replicated store.

The machine may be shared: absolute numbers move, ratios move less.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyagent.memory.replica import ReplicaStore
from pyagent.memory.report import fleet_summary
from pyagent.memory.store import KnowledgeStore
from pyagent.voyager.home import NodeHome
from pyagent.voyager.memory_client import FleetClient


def _pcts(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _latency(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return _pcts(out)


def _facts(n: int, tag: str) -> list[tuple[str, Any]]:
    return [(f"src/pkg{i % 97:02d}/{tag}_{i:07d}.py", {"reason": f"tests failed: test_{i % 1000}", "count": 1})
            for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fleet-memory-bench-"))
    tag = uuid.uuid4().hex[:6]
    names = [f"ann-{tag}", f"bob-{tag}", f"cyd-{tag}"]
    homes = {n: NodeHome(tmp / n) for n in names}
    keys = [h.keypair().public.decode() for h in homes.values()]
    for h in homes.values():
        for k in keys:
            h.trust(k)
    stores = {n: tmp / f"{n}.db" for n in names}
    # texts for the semantic search: each node holds a third
    for i, n in enumerate(names):
        with KnowledgeStore(stores[n]) as s:
            s.remember_many("notes", [(f"{n}-{j}", f"failure {j % 50} in module {j} seen by node {i}")
                                      for j in range(300)])
    procs = [subprocess.Popen([sys.executable, "-m", "pyagent", "node", "--name", n, "--home", str(homes[n].path),
                               "--memory", str(stores[n]), "--memory-interval", "0.2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in names]
    client = None
    try:
        client = FleetClient(homes[names[0]], discovery_wait=10.0).start()
        deadline = time.monotonic() + 60
        while True:
            nodes, _ = client.statuses()
            summary = fleet_summary(nodes, [])
            if len(nodes) == 3 and all(len(n["peers"]) == 2 for n in nodes) and summary["min_replication"] >= 2:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the nodes did not converge: {summary}")
            time.sleep(0.3)
        print(f"3 nodes up, {sum(n['items'] for n in nodes)} items held in all (R=2)")

        # -- fan-out latency
        union = KnowledgeStore(tmp / "union.db")
        for n in names:
            with KnowledgeStore(stores[n], readonly=True) as s:
                union.remember_many("notes", [(f.key, f.text) for f in s.search("failure", k=1000)])
        union.put("pyagent.failures", "probe", {"reason": "x"})
        with KnowledgeStore(stores[names[2]]) as s:
            s.put("pyagent.failures", "probe", {"reason": "x"})
        deadline = time.monotonic() + 30
        while True:  # a node busy long enough to miss heartbeats is "missing" until it answers again
            check = client.query("search", {"text": "failure 7 in module", "k": 10}, timeout=5.0)
            if check.complete or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # equal scores tie between nodes' copies of one text pattern: compare the scores, in order
        expected = [round(h.score, 5) for h in union.search("failure 7 in module", k=10)]
        if not check.complete or [round(r[3], 5) for r in check.result] != expected:
            raise SystemExit(f"the fleet search differs from the union's: {check}")
        local_fact = _latency(lambda: union.fact("pyagent.failures", "probe"), args.queries)
        partial: list[str] = []

        def ask(op: str, query: dict[str, Any]) -> None:
            found = client.query(op, query, timeout=2.0)
            if not found.complete:
                partial.append(op)

        fleet_fact = _latency(lambda: ask("fact", {"namespace": "pyagent.failures", "key": "probe"}), args.queries)
        local_search = _latency(lambda: union.search("failure 7 in module", k=10), args.queries)
        fleet_search = _latency(lambda: ask("search", {"text": "failure 7 in module", "k": 10}), args.queries)
        for label, local, fleet in (("fact lookup", local_fact, fleet_fact), ("semantic top-10", local_search,
                                                                               fleet_search)):
            print(f"{label:>16}: local p50 {local[0] * 1e3:.3f} ms p99 {local[1] * 1e3:.3f} ms | 3-node fan-out "
                  f"p50 {fleet[0] * 1e3:.3f} ms p99 {fleet[1] * 1e3:.3f} ms | ratio p50 {fleet[0] / local[0]:.1f}x "
                  f"p99 {fleet[1] / local[1]:.1f}x")

        print(f"{len(partial)} of {2 * args.queries} fleet queries were partial (a node missed the deadline)")

        # -- replication throughput
        facts = _facts(args.facts, "plain")
        with KnowledgeStore(tmp / "plain.db") as plain:
            t = time.perf_counter()
            plain.put_many("bulk", facts)
            plain_s = time.perf_counter() - t
        with KnowledgeStore(tmp / "replicated.db") as rs:
            ReplicaStore(rs, "f" * 32)
            t = time.perf_counter()
            rs.put_many("bulk", facts)
            triggered_s = time.perf_counter() - t
        with KnowledgeStore(stores[names[0]]) as writer:
            t0 = time.perf_counter()
            writer.put_many("bulk", _facts(args.facts, "fleet"))
            committed = time.perf_counter() - t0
        while True:
            nodes, _ = client.statuses(timeout=10.0)
            summary = fleet_summary(nodes, [])
            if summary["min_replication"] >= 2 and summary["under_replicated"] == 0 and all(
                    n["behind"] == 0 for n in nodes) and sum(n["items"] for n in nodes) >= 2 * args.facts:
                break
            if time.perf_counter() - t0 > 300:
                raise SystemExit(f"replication did not finish: {summary}")
            time.sleep(0.25)  # polling the nodes costs them work too: not too often
        replicated_s = time.perf_counter() - t0
        local_rate, fleet_rate = args.facts / plain_s, args.facts / replicated_s
        print(f"local bulk insert: {local_rate:,.0f} facts/s ({args.facts} facts, plain store); into a replicated "
              f"store: {args.facts / triggered_s:,.0f} facts/s (trigger cost {triggered_s / plain_s:.2f}x)")
        print(f"replication: {fleet_rate:,.0f} facts/s (commit on A {committed:.2f}s, every shard on >= 2 nodes "
              f"after {replicated_s:.2f}s) = {fleet_rate / local_rate:.2f}x the local bulk insert")
    finally:
        if client is not None:
            client.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
