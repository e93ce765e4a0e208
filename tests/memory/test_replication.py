"""Replication and fleet queries between real Voyager nodes in one process: mDNS on 127.0.0.1,
CurveZMQ-authenticated transports, real SQLite stores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pyagent.memory.fleet_query import FleetAnswer
from pyagent.memory.replica import ReplicaStore
from pyagent.memory.store import KnowledgeStore
from pyagent.voyager.home import NodeHome
from pyagent.voyager.links import TrustedLinks
from pyagent.voyager.node import NodeConfig, VoyagerNode
from pyagent.voyager.replication import FleetMemory
from tests.voyager.conftest import run


class SlowMemory(FleetMemory):
    """A peer that answers queries only after the caller's deadline."""

    async def _slow(self, payload: Any, request: Any) -> Any:
        await asyncio.sleep(3.0)
        return self._handle_query(payload, request)

    def register(self) -> None:
        super().register()
        self.transport.register("memory.query", self._slow)


class TamperingMemory(FleetMemory):
    """A peer that advertises honest shard hashes and then sends different bytes."""

    def _handle_shard(self, payload: Any, request: Any) -> dict[str, Any]:
        reply = super()._handle_shard(payload, request)
        if isinstance(reply.get("data"), bytes):
            data = bytearray(reply["data"])
            data[-1] ^= 0xFF
            reply["data"] = bytes(data)
        return reply


@asynccontextmanager
async def fleet(tmp: Path, kinds: list[type[FleetMemory]], *, replicas: int = 2,
                fill: Callable[[int, KnowledgeStore], None] | None = None, replicate: bool = False,
                ) -> AsyncIterator[list[FleetMemory]]:
    tag = uuid.uuid4().hex[:6]
    homes = [NodeHome(tmp / f"home{i}") for i in range(len(kinds))]
    keys = [h.keypair().public.decode() for h in homes]
    for h in homes:
        for k in keys:
            h.trust(k)
    nodes: list[VoyagerNode] = []
    mems: list[FleetMemory] = []
    for i, (home, kind) in enumerate(zip(homes, kinds, strict=True)):
        node = VoyagerNode(NodeConfig(name=f"n{i}-{tag}", home=str(home.path), heartbeat_interval=0.2))
        store = KnowledgeStore(tmp / f"n{i}.db", synchronous="normal")
        if fill is not None:
            fill(i, store)
        links = TrustedLinks(lambda node=node: node.discovery, node.home, node.transport, self_id=node.node_id)
        mem = kind(node.transport, links, node_id=node.node_id, name=node.config.name,
                   replica=ReplicaStore(store, node.node_id), replicas=replicas, interval=0.2)
        mem.register()
        nodes.append(node)
        mems.append(mem)
    for node in nodes:
        await node.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while any(len(m.links.live()) < len(mems) - 1 for m in mems) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    assert all(len(m.links.live()) == len(mems) - 1 for m in mems), "nodes did not find each other"
    rounds = [asyncio.ensure_future(m.run()) for m in mems] if replicate else []
    try:
        yield mems
    finally:
        for m in mems:
            m.stop()
        if rounds:
            await asyncio.wait(rounds, timeout=5)
        for node in nodes:
            await node.close()
        for m in mems:
            assert m.replica is not None
            m.replica.store.close()


def _docs(i: int, store: KnowledgeStore) -> None:
    topics = ["tests fail after refactor", "import cycle in package", "flaky network test",
              "slow sqlite query", "unused variable warning", "type error in parser"]
    store.remember_many("notes", [(f"n{i}-{j}", f"{topics[(i + j) % len(topics)]} seen on node {i} case {j}")
                                  for j in range(12)])
    for j in range(5):
        store.relate(f"agent:a{j % 2}", "failed" if (i + j) % 2 else "kept", f"file:f{i}-{j}.py")


def test_fleet_search_equals_a_store_holding_the_union(tmp_path: Path) -> None:
    union = KnowledgeStore(tmp_path / "union.db")
    for i in range(3):
        _docs(i, union)

    async def main() -> tuple[FleetAnswer, FleetAnswer]:
        async with fleet(tmp_path, [FleetMemory] * 3, fill=_docs) as mems:
            # no replication round has run: each node holds only its own texts
            return (await mems[0].query("search", {"text": "tests fail after refactor", "k": 7}, timeout=3.0),
                    await mems[1].query("neighbours", {"node": "agent:a1", "direction": "out"}, timeout=3.0))

    hits, edges = run(main(), timeout=60)
    assert hits.complete and len(hits.answered) == 3
    expected = union.search("tests fail after refactor", k=7)
    assert [(r[0], r[1], r[2]) for r in hits.result] == [(h.namespace, h.key, h.text) for h in expected]
    assert [round(r[3], 5) for r in hits.result] == [round(h.score, 5) for h in expected]
    assert {(r[0], r[1], r[2]) for r in edges.result} == {
        (e.subject, e.predicate, e.object) for e in union.neighbours("agent:a1")}
    union.close()


def test_a_peer_missing_the_deadline_is_named_and_the_rest_answers(tmp_path: Path) -> None:
    async def main() -> tuple[FleetAnswer, str]:
        async with fleet(tmp_path, [FleetMemory, FleetMemory, SlowMemory], fill=_docs) as mems:
            answer = await mems[0].query("search", {"text": "flaky network test", "k": 50}, timeout=0.5)
            return answer, mems[2].name

    answer, slow = run(main(), timeout=60)
    assert answer.missing == (slow,)
    assert not answer.complete
    owners = {r[1].split("-")[0] for r in answer.result}
    assert owners == {"n0", "n1"}  # the two that answered in time, nothing from the slow one


def test_replication_spreads_facts_and_refuses_a_tampered_shard(tmp_path: Path) -> None:
    def fill(i: int, store: KnowledgeStore) -> None:
        store.put_many("ns", [(f"k{i}-{j}", {"v": j}) for j in range(200)])

    async def main() -> tuple[list[FleetMemory], dict[str, int]]:
        async with fleet(tmp_path, [FleetMemory, FleetMemory, TamperingMemory], replicas=3, fill=fill,
                         replicate=True) as mems:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while loop.time() < deadline:
                await asyncio.sleep(0.3)
                held = [m.replica.store.namespaces().get("ns", 0) for m in mems if m.replica]
                if held == [400, 400, 600] and all(m.stats.refused for m in mems[:2]):
                    break
            counts = {m.name: m.replica.store.namespaces().get("ns", 0) for m in mems if m.replica}
            return mems, counts

    mems, counts = run(main(), timeout=90)
    rogue = mems[2].name
    for honest in mems[:2]:
        # every shard the tampering peer sent was refused, and the peer named
        assert honest.stats.refused and all(r.startswith(f"{rogue}: refused a shard from {rogue}")
                                            for r in honest.stats.refused)
        assert counts[honest.name] == 400  # the two honest nodes share their facts; none of the rogue's
    assert counts[rogue] == 600  # the rogue itself receives the honest shards fine


def test_a_tool_run_from_the_node_home_may_ask_its_node_and_a_stranger_may_not(tmp_path: Path) -> None:
    """``pyagent memory status --fleet`` on the node's own machine uses the node's keys."""
    from pyagent.voyager.transport import RequestTimeout, VoyagerTransport
    from tests.voyager.conftest import keypair

    async def main() -> tuple[str, bool]:
        node = VoyagerNode(NodeConfig(name="solo", home=str(tmp_path / "home"), discovery=False))
        store = KnowledgeStore(tmp_path / "solo.db")
        memory = FleetMemory(node.transport, TrustedLinks(lambda: None, node.home, node.transport),
                             node_id=node.node_id, name="solo", replica=ReplicaStore(store, node.node_id))
        memory.register()
        port = await node.start()
        same, stranger = VoyagerTransport(node.keypair), VoyagerTransport(keypair())
        try:
            for t in (same, stranger):
                await t.start(serve=False)
                t.connect("solo", "127.0.0.1", port, node.keypair.public)
            status = await same.request("solo", "memory.status", None, timeout=5)
            try:  # (the request's send itself can wait for a handshake that never completes)
                await asyncio.wait_for(stranger.request("solo", "memory.status", None, timeout=1.5), 3)
                refused = False
            except (RequestTimeout, TimeoutError):  # the CURVE handshake is denied: no reply ever comes
                refused = True
            return status["name"], refused
        finally:
            await same.close()
            await stranger.close()
            await node.close()
            store.close()

    name, refused = run(main(), timeout=30)
    assert name == "solo" and refused
