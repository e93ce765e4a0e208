"""Links to the trusted peers a DiscoveryNode sees: who is there, trusted, and answering heartbeats.

Discovery alone cannot tell that a node died (a SIGKILLed node's mDNS record outlives it); the
transport's heartbeats can. A peer counts as *live* when its advertised key fingerprint is in the
trusted list and its link is alive; a peer that stops answering is *known* but not live.
"""

from __future__ import annotations

from collections.abc import Callable

from pyagent.voyager.discovery import DiscoveryNode, PeerInfo
from pyagent.voyager.home import NodeHome
from pyagent.voyager.transport import VoyagerTransport

__all__ = ["TrustedLinks"]


class TrustedLinks:
    def __init__(
        self,
        discovery: Callable[[], DiscoveryNode | None],
        home: NodeHome,
        transport: VoyagerTransport,
        *,
        self_id: str | None = None,
    ) -> None:
        self._discovery = discovery
        self._home = home
        self._transport = transport
        self._self_id = self_id

    def known(self) -> list[PeerInfo]:
        """Trusted peers discovered on the network (live or not), each with a link opened."""
        discovery = self._discovery()
        if discovery is None:
            return []
        trusted = self._home.trusted_by_fingerprint()
        out = []
        for peer in discovery.peers():
            key = trusted.get(peer.fingerprint)
            if key is None or peer.node_id == self._self_id:
                continue
            self._transport.connect(peer.node_id, peer.address, peer.port, key)
            out.append(peer)
        return out

    def live(self) -> list[PeerInfo]:
        """Known peers whose link answers heartbeats."""
        return [p for p in self.known() if self._transport.is_alive(p.node_id)]
