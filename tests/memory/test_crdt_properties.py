"""The replicated store's merge is a CRDT: random operations on three replicas, delivered in random
orders with duplicates, converge to the same state (real SQLite files, the real shard exchange)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyagent.memory.crdt import Entry, encode_counters, merge
from pyagent.memory.fleet_memory import FAILURES, StoreKnowledge
from pyagent.memory.hlc import HybridClock
from pyagent.memory.replica import ReplicaStore
from pyagent.memory.store import KnowledgeStore
from pyagent.model.knowledge import ChangeOutcome

NODES = ("a" * 32, "b" * 32, "c" * 32)

stamps = st.builds(lambda w, c, n: f"{w:015d}{c:08d}{n}", st.integers(0, 5), st.integers(0, 3),
                   st.sampled_from(["a", "b", "c"]))
counters = st.dictionaries(st.sampled_from(["count", "successes"]),
                           st.dictionaries(st.sampled_from(NODES), st.integers(0, 9), max_size=3), max_size=2)
entries = st.builds(
    lambda hlc, deleted, payload, c: Entry(hlc, deleted, None if deleted else payload, encode_counters(c)),
    stamps, st.booleans(), st.binary(max_size=3), counters,
)


@given(entries, entries, entries)
def test_merge_is_commutative_associative_idempotent(a: Entry, b: Entry, c: Entry) -> None:
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    assert merge(merge(a, b), b) == merge(a, b)


def test_clock_orders_causally_after_what_it_observed() -> None:
    slow = HybridClock("a" * 32, wall=lambda: 100.0)
    fast = HybridClock("b" * 32, wall=lambda: 200.0)
    seen = fast.now()
    slow.observe(seen)
    assert slow.now() > seen  # a write made after seeing a peer's write wins over it
    first, second = slow.now(), slow.now()
    assert second > first


ops = st.lists(
    st.tuples(
        st.integers(0, 2),  # replica
        st.sampled_from(["put", "delete", "fail", "tick", "relate"]),
        st.integers(0, 5),  # key
        st.integers(0, 100),  # value
    ),
    min_size=1,
    max_size=25,
)
deliveries = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=12)


def _exchange(dst: ReplicaStore, src: ReplicaStore) -> None:
    """What a pull does: fetch every shard whose hash differs, verify it, merge it; and merge the clock."""
    mine = dst.shard_hashes()
    wanted = [(src.shard_bytes(s), h) for s, h in src.shard_hashes().items() if mine.get(s) != h]
    dst.merge_shards(wanted, peer="p")
    dst.merge_clock(src.clock_vector())


def _state(r: ReplicaStore) -> tuple[object, ...]:
    store = r.store
    facts = [(f.namespace, f.key, f.value, f.weight, f.last_used_cycle) for f in store.iter_facts()]
    edges = sorted((e.subject, e.predicate, e.object, e.weight) for e in store.neighbours("n", direction="both"))
    return tuple(facts), tuple(edges), store.cycle, tuple(sorted(r.shard_hashes().items()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, deliveries, st.randoms(use_true_random=False))
def test_three_replicas_converge_whatever_the_order(
    operations: list[tuple[int, str, int, int]], early: list[tuple[int, int]], rnd: object
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stores = [KnowledgeStore(Path(tmp) / f"{i}.db", synchronous="normal") for i in range(3)]
        replicas = [ReplicaStore(s, n) for s, n in zip(stores, NODES, strict=True)]
        knowledge = [StoreKnowledge(s, remember_reasons=False) for s in stores]
        ticks = failures = 0
        for step, (i, op, k, v) in enumerate(operations):
            store = stores[i]
            if op == "put":
                store.put("ns", f"k{k}", v)
            elif op == "delete":
                store.delete("ns", f"k{k}")
            elif op == "fail":
                failures += 1
                knowledge[i].record_outcome(ChangeOutcome("ruff", f"fix:{k % 2}", "lint", "a.py", "h", "failed", "x"))
            elif op == "tick":
                ticks += 1
                store.advance()
            else:
                store.relate("n", f"p{k % 2}", f"o{v % 3}", weight=1.0 + v)
            # some deliveries (possibly repeated, possibly stale) happen while work goes on
            if step < len(early):
                dst, src = early[step]
                if dst != src:
                    _exchange(replicas[dst], replicas[src])
        order = [(d, s) for d in range(3) for s in range(3) if d != s]
        rnd.shuffle(order)  # type: ignore[attr-defined]
        for _ in range(2):  # two full gossip rounds in a random order reach everyone
            for dst, src in order + order[:2]:  # with duplicates
                _exchange(replicas[dst], replicas[src])
        states = [_state(r) for r in replicas]
        assert states[0] == states[1] == states[2]
        assert stores[0].cycle == ticks  # every tick counted once, wherever it happened
        counted = sum(f.value["count"] for f in stores[0].query(FAILURES))
        assert counted == failures  # concurrent failures on different nodes are all counted
        for s in stores:
            s.close()
