"""mDNS discovery over real multicast on 127.0.0.1: peers added, updated and removed."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from pyagent.voyager.discovery import MAX_TXT_ENTRY, DiscoveryNode, PeerEvent, PeerInfo, build_txt
from tests.voyager.conftest import run


def test_txt_entries_fit_in_255_bytes() -> None:
    txt = build_txt(
        node_id=uuid.uuid4().hex, name="n", port=5555, slots=3, fingerprint="f" * 32, capabilities=["task"], version="1"
    )
    assert all(len(k) + 1 + len(v) <= MAX_TXT_ENTRY for k, v in txt.items())
    with pytest.raises(ValueError, match="at most 255"):
        build_txt(
            node_id="x", name="n", port=1, slots=1, fingerprint="f", capabilities=["c" * 300], version="1"
        )


def test_nodes_find_each_other_see_updates_and_goodbyes() -> None:
    async def scenario() -> None:
        events: list[tuple[PeerEvent, PeerInfo]] = []
        a = DiscoveryNode(node_id=uuid.uuid4().hex, name="alpha", port=40001, slots=2, fingerprint="aa")
        b = DiscoveryNode(
            node_id=uuid.uuid4().hex,
            name="beta",
            port=40002,
            slots=1,
            fingerprint="bb",
            on_change=lambda ev, p: events.append((ev, p)),
        )
        await a.start()
        await b.start()
        try:
            peers = await b.wait_for_peers(1, timeout=5)
            assert [(p.name, p.port, p.slots, p.fingerprint, p.address) for p in peers] == [
                ("alpha", 40001, 2, "aa", "127.0.0.1")
            ]
            assert [p.name for p in await a.wait_for_peers(1, timeout=5)] == ["beta"]
            assert b.peer(a.node_id) is not None
            await a.set_slots(0)
            for _ in range(50):
                if b.peers()[0].slots == 0:
                    break
                await asyncio.sleep(0.1)
            assert b.peers()[0].slots == 0
            assert any(ev == "updated" for ev, _ in events)
        finally:
            await a.close()
        for _ in range(50):
            if not b.peers():
                break
            await asyncio.sleep(0.1)
        assert b.peers() == []
        assert next(ev for ev, _ in events) == "added"
        assert events[-1][0] == "removed"
        await b.close()

    run(scenario())


def test_browse_only_node_is_not_advertised() -> None:
    async def scenario() -> None:
        watcher = DiscoveryNode(node_id=uuid.uuid4().hex, name="watch", port=None)
        node = DiscoveryNode(node_id=uuid.uuid4().hex, name="gamma", port=40003)
        await watcher.start()
        await node.start()
        try:
            assert [p.name for p in await watcher.wait_for_peers(1, timeout=5)] == ["gamma"]
            await asyncio.sleep(0.5)
            assert node.peers() == []  # the browse-only watcher never shows up
        finally:
            await node.close()
            await watcher.close()

    run(scenario())
