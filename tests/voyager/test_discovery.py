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


async def wait_for(node: DiscoveryNode, node_id: str, present: bool = True, timeout: float = 5.0) -> PeerInfo | None:
    """Poll until ``node_id`` is (or is no longer) in the table; other test runs may share the LAN."""
    for _ in range(int(timeout / 0.05)):
        peer = node.peer(node_id)
        if (peer is not None) == present:
            return peer
        await asyncio.sleep(0.05)
    return node.peer(node_id)


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
            peer = await wait_for(b, a.node_id)
            assert peer is not None
            assert (peer.name, peer.port, peer.slots, peer.fingerprint, peer.address) == (
                "alpha",
                40001,
                2,
                "aa",
                "127.0.0.1",
            )
            seen_b = await wait_for(a, b.node_id)
            assert seen_b is not None and seen_b.name == "beta"
            await a.set_slots(0)
            for _ in range(100):
                peer = b.peer(a.node_id)
                if peer is not None and peer.slots == 0:
                    break
                await asyncio.sleep(0.05)
            assert peer is not None and peer.slots == 0
        finally:
            await a.close()
        assert await wait_for(b, a.node_id, present=False) is None
        mine = [ev for ev, p in events if p.node_id == a.node_id]
        assert mine[0] == "added" and "updated" in mine and mine[-1] == "removed"
        await b.close()

    run(scenario())


def test_browse_only_node_is_not_advertised() -> None:
    async def scenario() -> None:
        watcher = DiscoveryNode(node_id=uuid.uuid4().hex, name="watch", port=None)
        node = DiscoveryNode(node_id=uuid.uuid4().hex, name="gamma", port=40003)
        await watcher.start()
        await node.start()
        try:
            assert await wait_for(watcher, node.node_id) is not None
            await asyncio.sleep(0.5)
            assert node.peer(watcher.node_id) is None  # the browse-only watcher never shows up
        finally:
            await node.close()
            await watcher.close()

    run(scenario())
