"""mDNS discovery of Voyager nodes (python-zeroconf, asyncio API).

Each node advertises ``<name>-<id8>._pyagent._tcp.local.`` with short TXT entries (each at most
255 bytes, as DNS-SD requires) and browses for the others. The TXT record carries only a
fingerprint of the node's public key: the full key must already be in the local trusted list,
so a spoofed advertisement cannot make us trust a key we have not been given.

Discovery says who is *there*; it cannot say quickly who has died (a SIGKILLed node sends no
goodbye and its records live for their TTL). The transport's heartbeats do that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from pyagent import __version__

SERVICE_TYPE = "_pyagent._tcp.local."
MAX_TXT_ENTRY = 255
log = logging.getLogger(__name__)

PeerEvent = Literal["added", "updated", "removed"]


@dataclass(frozen=True)
class PeerInfo:
    node_id: str
    name: str
    address: str
    port: int
    slots: int  # free task slots, as last advertised
    fingerprint: str
    version: str
    capabilities: tuple[str, ...]
    service_name: str
    capacity: int = 0  # total task slots (0 if the node did not say)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "node_id": self.node_id,
            "address": self.address,
            "port": self.port,
            "slots": self.slots,
            "capacity": self.capacity,
            "fingerprint": self.fingerprint,
            "version": self.version,
            "capabilities": list(self.capabilities),
        }


def build_txt(
    *,
    node_id: str,
    name: str,
    port: int,
    slots: int,
    fingerprint: str,
    capabilities: Iterable[str],
    version: str,
    capacity: int = 0,
) -> dict[str, str]:
    txt = {
        "id": node_id,
        "name": name,
        "v": version,
        "port": str(port),
        "slots": str(slots),
        "cap": str(capacity),
        "fp": fingerprint,
        "caps": ",".join(capabilities),
    }
    for key, value in txt.items():
        size = len(key.encode()) + 1 + len(value.encode())
        if size > MAX_TXT_ENTRY:
            raise ValueError(f"TXT entry {key!r} is {size} bytes; mDNS allows at most {MAX_TXT_ENTRY}")
    return txt


def parse_txt(info: AsyncServiceInfo) -> PeerInfo | None:
    """A PeerInfo from a resolved service, or None if its record is not a valid Voyager one."""
    props = {
        (k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): (
            v.decode("utf-8", "replace") if isinstance(v, bytes) else ""
        )
        for k, v in (info.properties or {}).items()
    }
    addresses = info.parsed_addresses(IPVersion.V4Only)
    try:
        port = int(props["port"])
        slots = int(props.get("slots", "0"))
        capacity = int(props.get("cap", "0"))
        node_id = props["id"]
    except (KeyError, ValueError):
        return None
    if not addresses or not 0 < port < 65536 or not node_id:
        return None
    caps = tuple(c for c in props.get("caps", "").split(",") if c)
    return PeerInfo(
        node_id=node_id,
        name=props.get("name", node_id[:8]),
        address=addresses[0],
        port=port,
        slots=max(0, slots),
        fingerprint=props.get("fp", ""),
        version=props.get("v", ""),
        capabilities=caps,
        service_name=info.name,
        capacity=max(0, capacity),
    )


class DiscoveryNode:
    """Advertise this node (optional) and keep a live table of the other nodes on the LAN.

    ``interfaces`` are the IPv4 addresses mDNS uses; tests pass ``["127.0.0.1"]``.
    Pass ``port=None`` to only browse (what ``pyagent peers`` does).
    """

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        port: int | None,
        fingerprint: str = "",
        slots: int = 0,
        capacity: int = 0,
        capabilities: Iterable[str] = ("task",),
        interfaces: list[str] | None = None,
        address: str | None = None,
        version: str = __version__,
        on_change: Callable[[PeerEvent, PeerInfo], None] | None = None,
        resolve_timeout: float = 3.0,
    ) -> None:
        self.node_id = node_id
        self.name = name
        self.port = port
        self.fingerprint = fingerprint
        self.slots = slots
        self.capacity = capacity
        self.capabilities = tuple(capabilities)
        self.interfaces = interfaces if interfaces is not None else ["127.0.0.1"]
        self.address = address or self.interfaces[0]
        self.version = version
        self.on_change = on_change
        self.resolve_timeout = resolve_timeout
        self._peers: dict[str, PeerInfo] = {}  # service name -> peer
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        safe = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in name)[:40] or "node"
        self.service_name = f"{safe}-{node_id[:8]}.{SERVICE_TYPE}"

    # -- lifecycle

    async def start(self) -> None:
        self._aiozc = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        if self.port is not None:
            self._info = self._make_info()
            await self._aiozc.async_register_service(self._info)
        self._browser = AsyncServiceBrowser(self._aiozc.zeroconf, [SERVICE_TYPE], handlers=[self._on_state_change])

    async def close(self) -> None:
        """Say goodbye on the network and release every socket; bounded in time."""
        aiozc, self._aiozc = self._aiozc, None
        if aiozc is None:
            return
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._browser.async_cancel(), 0.5)
            self._browser = None
        if self._info is not None:
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(aiozc.async_unregister_all_services(), 1.0)
        with contextlib.suppress(Exception, TimeoutError):
            await asyncio.wait_for(aiozc.async_close(), 1.0)

    async def __aenter__(self) -> DiscoveryNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- advertised state

    def _make_info(self) -> AsyncServiceInfo:
        assert self.port is not None
        txt = build_txt(
            node_id=self.node_id,
            name=self.name,
            port=self.port,
            slots=self.slots,
            fingerprint=self.fingerprint,
            capabilities=self.capabilities,
            version=self.version,
            capacity=self.capacity,
        )
        return AsyncServiceInfo(
            SERVICE_TYPE,
            self.service_name,
            addresses=[socket.inet_aton(self.address)],
            port=self.port,
            properties=txt,
            server=f"pyagent-{self.node_id[:12]}.local.",
        )

    async def set_slots(self, slots: int) -> None:
        """Re-announce the TXT record when the number of free slots changes."""
        if slots == self.slots:
            return
        self.slots = slots
        if self._aiozc is not None and self._info is not None:
            self._info = self._make_info()
            await self._aiozc.async_update_service(self._info)

    # -- peers

    def peers(self) -> list[PeerInfo]:
        return sorted(self._peers.values(), key=lambda p: (p.name, p.node_id))

    def peer(self, node_id: str) -> PeerInfo | None:
        return next((p for p in self._peers.values() if p.node_id == node_id), None)

    async def wait_for_peers(self, count: int, timeout: float) -> list[PeerInfo]:
        """Wait until at least ``count`` peers are known or ``timeout`` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self._peers) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.peers()

    def _on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if name == self.service_name:
            return
        if state_change is ServiceStateChange.Removed:
            peer = self._peers.pop(name, None)
            if peer is not None:
                self._notify("removed", peer)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        try:
            found = await info.async_request(zeroconf, int(self.resolve_timeout * 1000))
        except Exception as exc:  # a flaky network must not kill the browser
            log.debug("resolving %s failed: %s", name, exc)
            return
        if not found:
            return
        peer = parse_txt(info)
        if peer is None or peer.node_id == self.node_id:
            return
        old = self._peers.get(name)
        if old == peer:
            return
        self._peers[name] = peer
        self._notify("added" if old is None else "updated", peer)

    def _notify(self, event: PeerEvent, peer: PeerInfo) -> None:
        self._changed.set()
        if self.on_change is not None:
            try:
                self.on_change(event, peer)
            except Exception:
                log.exception("peer change callback failed")


