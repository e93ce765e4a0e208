"""One-shot browsing for ``pyagent peers``."""

from __future__ import annotations

import asyncio
import uuid

from pyagent.voyager.discovery import DiscoveryNode, PeerInfo


async def browse(interface: str, timeout: float) -> list[PeerInfo]:
    """Listen on mDNS for ``timeout`` seconds and return the nodes seen (without advertising)."""
    node = DiscoveryNode(node_id=uuid.uuid4().hex, name="peers", port=None, interfaces=[interface])
    await node.start()
    try:
        await asyncio.sleep(timeout)
        return node.peers()
    finally:
        await node.close()
