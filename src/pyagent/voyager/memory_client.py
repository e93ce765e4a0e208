"""Fleet memory from a process that is not a node: an improve run, ``pyagent memory status --fleet``.

It browses mDNS for the trusted nodes of its home (the same keys as the machine's node, so every
peer that trusts that node answers), and runs the Voyager transport on its own event loop in a
background thread: the planner calling it is synchronous and may itself run inside an event loop.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from pyagent.memory.fleet_query import FleetAnswer
from pyagent.voyager.discovery import DiscoveryNode
from pyagent.voyager.home import NodeHome
from pyagent.voyager.links import TrustedLinks
from pyagent.voyager.loop import configure_event_loop_policy
from pyagent.voyager.replication import FleetMemory
from pyagent.voyager.transport import VoyagerTransport

__all__ = ["FleetClient"]

T = TypeVar("T")


class FleetClient:
    def __init__(self, home: NodeHome, *, interface: str = "127.0.0.1", discovery_wait: float = 2.0) -> None:
        self.home = home
        self.interface = interface
        self.discovery_wait = discovery_wait
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._discovery: DiscoveryNode | None = None
        self._transport: VoyagerTransport | None = None
        self.memory: FleetMemory | None = None

    def start(self) -> FleetClient:
        """Start the loop thread, the transport and discovery; wait up to ``discovery_wait`` for a node."""
        configure_event_loop_policy()
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fleet-memory", daemon=True)
        self._thread.start()
        self._call(self._start(), self.discovery_wait + 10.0)
        return self

    async def _start(self) -> None:
        self._transport = VoyagerTransport(self.home.keypair(), trusted=self.home.trusted_keys, host=self.interface)
        await self._transport.start(serve=False)
        self._discovery = DiscoveryNode(node_id=uuid.uuid4().hex, name="memory-client", port=None,
                                        interfaces=[self.interface])
        await self._discovery.start()
        links = TrustedLinks(lambda: self._discovery, self.home, self._transport)
        self.memory = FleetMemory(self._transport, links, node_id=uuid.uuid4().hex, name="client")
        # Wait for the first trusted node, then until no new one shows up for a second (each node's
        # record resolves separately), all within ``discovery_wait``.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.discovery_wait
        while loop.time() < deadline:
            seen = len(self._discovery.peers())
            quiet = deadline - loop.time() if not links.known() else min(1.0, deadline - loop.time())
            await self._discovery.wait_for_peers(seen + 1, quiet)
            if links.known() and len(self._discovery.peers()) == seen:
                break

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        assert self._loop is not None, "start() the client first"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def query(self, op: str, args: Mapping[str, Any], *, timeout: float = 1.0) -> FleetAnswer:
        """A fleet-wide query with a deadline (see :meth:`FleetMemory.query`)."""
        assert self.memory is not None
        return self._call(self.memory.query(op, args, timeout=timeout), timeout + 5.0)

    def statuses(self, *, timeout: float = 2.0) -> tuple[list[dict[str, Any]], list[str]]:
        assert self.memory is not None
        return self._call(self.memory.statuses(timeout=timeout), timeout + 5.0)

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self._loop = None

        async def stop() -> None:
            if self._discovery is not None:
                await self._discovery.close()
            if self._transport is not None:
                await self._transport.close()

        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(5.0)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(5.0)
            loop.close()


def open_fleet_knowledge(local: Any) -> Any:
    """``improve --fleet-memory``: the workspace's store plus the fleet, with the swarm's key folder
    (``$PYAGENT_NODE_HOME``) and interface (``$PYAGENT_SWARM_INTERFACE``)."""
    import os

    from pyagent.memory.fleet_knowledge import FleetKnowledge

    home = NodeHome(os.environ.get("PYAGENT_NODE_HOME") or None)
    try:
        client = FleetClient(home, interface=os.environ.get("PYAGENT_SWARM_INTERFACE", "127.0.0.1")).start()
    except BaseException:
        local.close()
        raise
    return FleetKnowledge(local, client)
