"""Placement by rendezvous hashing, clock stamps, and what a node does with bad requests from a peer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import blake3
import msgpack
import pytest

from pyagent.memory.hlc import HybridClock, parse_stamp
from pyagent.memory.placement import SHARDS, owners, shard_of
from pyagent.memory.replica import ReplicaStore, ShardError
from pyagent.memory.report import fleet_summary
from pyagent.memory.store import KnowledgeStore
from pyagent.voyager.home import NodeHome
from pyagent.voyager.links import TrustedLinks
from pyagent.voyager.replication import FleetMemory
from pyagent.voyager.transport import VoyagerTransport

NODES = [f"{i:032x}" for i in range(1, 6)]


def test_each_shard_has_r_owners_and_a_leaving_node_moves_only_its_shards() -> None:
    before = {s: owners(s, NODES, 2) for s in range(SHARDS)}
    assert all(len(o) == 2 and len(set(o)) == 2 for o in before.values())
    assert owners(3, NODES[:1], 2) == NODES[:1]  # fewer live nodes than R: all of them
    gone = NODES[0]
    after = {s: owners(s, NODES[1:], 2) for s in range(SHARDS)}
    for s in range(SHARDS):
        if gone not in before[s]:
            assert after[s] == before[s]  # untouched by the departure
        else:
            survivor = [n for n in before[s] if n != gone]
            assert survivor[0] in after[s]  # the surviving holder stays; one new holder is added
    load = {n: sum(n in o for o in before.values()) for n in NODES}
    assert min(load.values()) > SHARDS * 2 / len(NODES) / 2  # roughly balanced
    with pytest.raises(ValueError, match="replication factor"):
        owners(0, NODES, 0)
    assert 0 <= shard_of("facts", ("ns", "k")) < SHARDS
    assert shard_of("facts", ("ns", "k")) == shard_of("facts", ("ns", "k"))


def test_clock_stamps_are_totally_ordered_and_checked() -> None:
    clock = HybridClock("ab" * 16, wall=lambda: 5.0)
    stamps = [clock.now() for _ in range(3)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert parse_stamp(stamps[0]) == (5000, 0, "ab" * 16)
    for bad in ("", "x" * 40, "1" * 23 + "G", 7):
        with pytest.raises(ValueError, match="not a hybrid-logical-clock stamp"):
            parse_stamp(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lowercase hex"):
        HybridClock("Node-A")


def test_malformed_shards_are_refused_whole_and_name_the_peer(tmp_path: Path) -> None:
    with KnowledgeStore(tmp_path / "a.db") as store:
        replica = ReplicaStore(store, "a" * 32)
        store.put("ns", "k", 1)
        good = {s: replica.shard_bytes(s) for s in replica.shard_hashes()}
        data = next(iter(good.values()))
        shard_no, rows = msgpack.unpackb(data, raw=False)
        wrong_shard = msgpack.packb([(shard_no + 1) % SHARDS, rows], use_bin_type=True)
        bad_stamp = msgpack.packb([shard_no, [[*rows[0][:4], "yesterday", *rows[0][5:]]]], use_bin_type=True)
        with KnowledgeStore(tmp_path / "b.db") as other:
            target = ReplicaStore(other, "b" * 32)
            for payload, reason in ((wrong_shard, "does not belong to shard"), (bad_stamp, "hybrid-logical-clock"),
                                    (b"\x00garbage", "malformed")):
                changed, [refusal] = target.merge_shards([(payload, blake3.blake3(payload).digest())],
                                                         peer="mallory")
                assert changed == 0 and isinstance(refusal, ShardError)
                assert reason in str(refusal) and refusal.peer == "mallory" and "mallory" in str(refusal)
            assert other.counts()["facts"] == 0  # nothing of a refused shard was applied
            assert target.merge_shards([(data, blake3.blake3(data).digest())], peer="alice") == (1, [])
            assert other.get("ns", "k") == 1


def test_a_node_answers_bad_memory_requests_with_errors_and_keeps_serving(tmp_path: Path) -> None:
    async def main() -> list[str]:
        server_home, client_home = NodeHome(tmp_path / "s"), NodeHome(tmp_path / "c")
        server_key, client_key = server_home.keypair(), client_home.keypair()
        server = VoyagerTransport(server_key, trusted=[client_key.public])
        client = VoyagerTransport(client_key)
        store = KnowledgeStore(tmp_path / "s.db")
        store.put("ns", "k", 1)
        memory = FleetMemory(server, TrustedLinks(lambda: None, server_home, server), node_id="5" * 32,
                             name="srv", replica=ReplicaStore(store, "5" * 32))
        memory.register()
        port = await server.start()
        await client.start(serve=False)
        client.connect("srv", "127.0.0.1", port, server_key.public)
        errors = []
        for kind, payload in (("memory.digest", "nope"), ("memory.digest", {"hashes": [[1, b"short"]]}),
                              ("memory.shard", {"shard": 10**6, "hash": b"x" * 32}),
                              ("memory.query", {"op": "drop table"}),
                              ("memory.query", {"op": "search", "args": {"text": "", "k": 3}})):
            try:
                await client.request("srv", kind, payload, timeout=5)
            except Exception as exc:  # the RemoteError carrying the node's message
                errors.append(str(exc))
        ok = await client.request("srv", "memory.query", {"op": "fact", "args": {"namespace": "ns", "key": "k"}},
                                  timeout=5)
        errors.append(f"ok {ok[3]}")
        await client.close()
        await server.close()
        store.close()
        return errors

    errors = asyncio.run(asyncio.wait_for(main(), 30))
    assert errors[0] == "ValueError: memory.digest takes a map"
    assert "32-byte hash" in errors[1] and "32-byte hash" in errors[2]
    assert "op one of fact, facts, search, neighbours" in errors[3]
    assert "non-empty string 'text'" in errors[4]
    assert errors[5] == "ok 1"  # still serving after every bad request


def test_fleet_summary_counts_identical_copies() -> None:
    h1, h2 = b"1" * 32, b"2" * 32
    nodes = [
        {"name": "a", "replicas": 2, "hashes": [[0, h1], [1, h1]], "items": 3, "behind": 0, "peers": {}},
        {"name": "b", "replicas": 2, "hashes": [[0, h1], [1, h2]], "items": 2, "behind": 1,
         "peers": {"a": {"behind": 1, "last_sync_s": 0.4}}},
    ]
    summary = fleet_summary(nodes, ["c"])
    assert summary["min_replication"] == 1 and summary["under_replicated"] == 1  # shard 1 differs
    assert summary["missing"] == ["c"] and summary["nodes"][1]["lag"] == 1
    assert summary["nodes"][1]["last_sync_s"] == 0.4


def test_texts_from_a_peer_with_another_embedder_are_refused(tmp_path: Path) -> None:
    with KnowledgeStore(tmp_path / "a.db") as a, KnowledgeStore(tmp_path / "b.db") as b:
        source, target = ReplicaStore(a, "a" * 32), ReplicaStore(b, "b" * 32)
        a.remember("notes", "n1", "tests fail after the refactor")
        shards = [(source.shard_bytes(s), h) for s, h in source.shard_hashes().items()]
        changed, refused = target.merge_shards(shards, peer="carol", embedder="some-other-model")
        assert changed == 0 and len(refused) == 1
        assert "carol" in str(refused[0]) and "some-other-model" in str(refused[0])
        changed, refused = target.merge_shards(shards, peer="carol", embedder=a.get_meta("embedder"))
        assert changed == 1 and not refused
        assert b.search("refactor tests fail", k=1)[0].key == "n1"
