"""One-shot browsing for ``pyagent peers``: who advertises, and who proved the key it claims."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from pyagent.voyager.discovery import DiscoveryNode, PeerInfo
from pyagent.voyager.home import NodeHome
from pyagent.voyager.transport import VoyagerTransport


@dataclass(frozen=True)
class SeenPeer:
    """A peer as ``pyagent peers`` shows it.

    ``key_listed``: the fingerprint it advertises belongs to a key in our trusted list (anyone can
    copy a fingerprint into an mDNS record). ``verified``: it answered over a CurveZMQ link made with
    that key, which only the key's owner can do. Trusted means both.
    """

    info: PeerInfo
    key_listed: bool
    verified: bool

    @property
    def trusted(self) -> bool:
        return self.key_listed and self.verified


async def browse(interface: str, timeout: float, home: NodeHome, verify_timeout: float = 3.0) -> list[SeenPeer]:
    """Listen on mDNS for ``timeout`` seconds (without advertising), then handshake with every peer
    that claims a trusted key, all at once, each for at most ``verify_timeout`` seconds."""
    node = DiscoveryNode(node_id=uuid.uuid4().hex, name="peers", port=None, interfaces=[interface])
    await node.start()
    try:
        await asyncio.sleep(timeout)
        peers = node.peers()
    finally:
        await node.close()
    trusted = home.trusted_by_fingerprint()
    claimed = [p for p in peers if p.fingerprint in trusted]
    if not claimed:
        return [SeenPeer(p, False, False) for p in peers]
    transport = VoyagerTransport(home.keypair(), trusted=home.trusted_keys, host=interface)
    await transport.start(serve=False)
    try:
        # each advertisement gets its own link, even when two claim the same node id
        proofs = await asyncio.gather(*(
            transport.verify(f"{p.node_id}@{p.service_name}", p.address, p.port, trusted[p.fingerprint],
                             verify_timeout)
            for p in claimed
        ))
    finally:
        await transport.close()
    verified = {p.service_name for p, ok in zip(claimed, proofs, strict=True) if ok}
    return [SeenPeer(p, p.fingerprint in trusted, p.service_name in verified) for p in peers]
