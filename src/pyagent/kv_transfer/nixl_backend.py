"""NIXL data path (``pip install 'pyagent[nixl]'``): the decode side READs leased blocks straight out of the
prefill side's cache memory (UCX; on CPU hosts a DRAM-to-DRAM read between processes), no copy through
the side channel.

Each side registers its K and V arrays once and prepares, once, one descriptor per (K or V, layer, block)
— a block of one layer is one contiguous run in the cache layout. A transfer then names only the
descriptor indices of the blocks the decode side lacks (vLLM's ``prep_xfer_dlist`` / ``make_prepped_xfer``
pattern), and carries the lease's request id as its notification, so the prefill side learns the read
finished without another message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from pyagent.inference.kv_cache import KVCacheManager
from pyagent.kv_transfer.layout import KVProtocolError

INSTALL_HINT = "NIXL is not installed: install the extra with `pip install 'pyagent[nixl]'`"


class NixlUnavailable(RuntimeError):
    """``--kv-backend nixl`` without the NIXL package (or without a usable UCX backend)."""


def nixl_available() -> bool:
    try:
        import nixl._api  # noqa: F401
    except ImportError:
        return False
    return True


def _descriptors(k_addr: int, v_addr: int, num_layers: int, num_blocks: int, block_bytes: int) -> np.ndarray:
    """Rows (address, length, device) for every (kind, layer, block), index ``(kind*L + layer)*N + block``."""
    idx = np.arange(num_layers * num_blocks, dtype=np.uint64) * np.uint64(block_bytes)
    rows = np.empty((2 * num_layers * num_blocks, 3), dtype=np.uint64)
    rows[:, 0] = np.concatenate([np.uint64(k_addr) + idx, np.uint64(v_addr) + idx])
    rows[:, 1] = block_bytes
    rows[:, 2] = 0
    return rows


class NixlBackend:
    def __init__(self, name: str, kv: KVCacheManager) -> None:
        if not nixl_available():
            raise NixlUnavailable(INSTALL_HINT)
        from nixl._api import nixl_agent, nixl_agent_config

        try:
            self.agent = nixl_agent(name, nixl_agent_config(backends=["UCX"]))
        except Exception as exc:  # the bindings raise their own error types
            raise NixlUnavailable(f"NIXL could not start its UCX backend: {exc}") from None
        self.name = name
        self.kv = kv
        k, v = kv.k_cache, kv.v_cache
        self.num_layers, self.num_blocks = int(k.shape[0]), int(k.shape[1])
        self.block_bytes = int(k[0, 0].nbytes)
        self._reg = self.agent.register_memory([(k.ctypes.data, k.nbytes, 0, ""), (v.ctypes.data, v.nbytes, 0, "")],
                                               "DRAM")
        self._local = self.agent.prep_xfer_dlist("NIXL_INIT_AGENT", _descriptors(
            k.ctypes.data, v.ctypes.data, self.num_layers, self.num_blocks, self.block_bytes), "DRAM")
        self._remote: Any = None
        self._remote_blocks = 0

    def describe(self) -> dict[str, Any]:
        """What a decode peer needs to read from us (sent in the handshake reply)."""
        return {"metadata": self.agent.get_agent_metadata(), "k_addr": int(self.kv.k_cache.ctypes.data),
                "v_addr": int(self.kv.v_cache.ctypes.data), "num_blocks": self.num_blocks}

    def add_peer(self, info: Any) -> None:
        """Adopt a prefill peer's agent and prepare its descriptors (again after the peer restarted)."""
        if not isinstance(info, dict) or not isinstance(info.get("metadata"), bytes) or any(
                not isinstance(info.get(f), int) or isinstance(info.get(f), bool) or info[f] < 0
                for f in ("k_addr", "v_addr", "num_blocks")):
            raise KVProtocolError("the peer's NIXL description is malformed")
        remote = self.agent.add_remote_agent(info["metadata"])
        if isinstance(remote, bytes):
            remote = remote.decode()
        if self._remote is not None:
            self.agent.release_dlist_handle(self._remote)
        self._remote_blocks = int(info["num_blocks"])
        self._remote = self.agent.prep_xfer_dlist(remote, _descriptors(
            info["k_addr"], info["v_addr"], self.num_layers, self._remote_blocks, self.block_bytes), "DRAM")

    def _indices(self, blocks: Sequence[int], num_blocks: int) -> np.ndarray:
        b = np.asarray(blocks, dtype=np.int64)
        layers = np.arange(2 * self.num_layers, dtype=np.int64)[:, None] * num_blocks
        return (layers + b[None, :]).reshape(-1)

    async def read(self, remote_blocks: Sequence[int], local_blocks: Sequence[int], notify: bytes,
                   timeout: float) -> None:
        if self._remote is None:
            raise KVProtocolError("no NIXL peer: the handshake did not describe one")
        if any(not 0 <= b < self._remote_blocks for b in remote_blocks):
            raise KVProtocolError("block ids outside the peer's cache")
        handle = self.agent.make_prepped_xfer("READ", self._local, self._indices(local_blocks, self.num_blocks),
                                              self._remote, self._indices(remote_blocks, self._remote_blocks),
                                              notify)
        try:
            state = self.agent.transfer(handle)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while state == "PROC":
                if loop.time() > deadline:
                    raise TimeoutError(f"NIXL read did not finish within {timeout:g} s")
                await asyncio.sleep(0.0005)
                state = self.agent.check_xfer_state(handle)
            if state != "DONE":
                raise KVProtocolError(f"NIXL read failed ({state})")
        finally:
            self.agent.release_xfer_handle(handle)

    def notifications(self) -> list[str]:
        """Request ids whose blocks a peer finished reading (sent with its transfers)."""
        done = []
        for messages in self.agent.get_new_notifs().values():
            done += [m.decode(errors="replace") for m in messages]
        return done
