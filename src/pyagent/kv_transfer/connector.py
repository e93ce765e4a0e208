"""``DisaggConnector``: the engine's KV connector for prefill and decode instances.

A prefill instance serves a side channel (the Voyager transport: CurveZMQ-authenticated ZeroMQ, msgpack
envelopes) on which decode peers handshake, read leased blocks and say when they are done. A decode
instance connects to its configured peer, handshakes once (refusing a peer whose layout differs), and
for each request the router hands it, loads only the blocks its own prefix cache lacks. Loads run on
the connector's own event-loop thread; the engine only sees the hooks of ``KVConnector``.

Every failure ends in a known state: a load that fails or times out makes the decode instance compute
the prompt itself; a lease that nobody ends expires; a malformed side-channel message is dropped with
the sending peer named in the log and the instance keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pyagent.inference.config import ModelConfig
from pyagent.inference.kv_cache import KVCacheManager
from pyagent.inference.kv_connector import RemoteMatch, RequestView, TransferUpdate
from pyagent.kv_transfer.layout import HANDSHAKE_VERSION, KVLayout, KVProtocolError
from pyagent.kv_transfer.leases import LeaseTable
from pyagent.kv_transfer.nixl_backend import NixlBackend
from pyagent.kv_transfer.params import RemotePrefill, prompt_digest, wants_remote_decode
from pyagent.voyager.home import KeyPair, fingerprint
from pyagent.voyager.transport import Request as WireRequest
from pyagent.voyager.transport import TransportError, VoyagerTransport

log = logging.getLogger(__name__)

Role = Literal["prefill", "decode"]
PEER = "prefill"  # the decode side's link name for its one prefill peer
READ_CHUNK_BYTES = 8 * 1024 * 1024  # one kv.read reply stays well under the envelope limit


class HandshakeRefused(RuntimeError):
    """The peer's layout differs from ours (or it refused ours): no blocks are exchanged."""


@dataclass(frozen=True)
class PeerAddress:
    host: str
    port: int
    server_key: bytes

    @classmethod
    def parse(cls, spec: str, server_key: bytes) -> PeerAddress:
        """``tcp://HOST:PORT`` (or ``HOST:PORT``)."""
        rest = spec.removeprefix("tcp://")
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--kv-peer {spec!r}: expected tcp://HOST:PORT")
        return cls(host.strip("[]"), int(port), server_key)


@dataclass
class _Load:
    request_id: str
    remote: RemotePrefill
    remote_blocks: list[int]
    local_blocks: list[int]


class DisaggConnector:
    """See the module docstring; one per engine, created by the CLI for ``serve --role prefill|decode``."""

    def __init__(self, role: Role, *, keypair: KeyPair,
                 trusted: Callable[[], set[bytes]], host: str = "127.0.0.1", port: int = 0,
                 peer: PeerAddress | None = None, lease_timeout: float = 30.0,
                 backend: Literal["zmq", "nixl"] = "zmq") -> None:
        if role == "decode" and peer is None:
            raise ValueError("a decode instance needs its prefill peer (--kv-peer)")
        self.role = role
        self.engine_id = uuid.uuid4().hex[:16]
        self.peer = peer
        self.leases = LeaseTable(lease_timeout)
        self.lease_timeout = lease_timeout
        self.transport = VoyagerTransport(keypair, trusted=lambda: trusted() | {keypair.public}, host=host,
                                          port=port, heartbeat_interval=0.5, heartbeat_misses=4)
        self.layout: KVLayout | None = None
        self.kv: KVCacheManager | None = None
        self._wake: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._queued: list[_Load] = []
        self._inflight: set[str] = set()
        self._loaded: set[str] = set()
        self._failed: set[str] = set()
        self._peer_engine: str | None = None  # engine id of the prefill peer we handshook with
        self._verified_peers: set[str] = set()  # keys (Z85) of decode peers whose layout matched
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.backend = backend
        self.nixl: NixlBackend | None = None
        self.stats = {"loads": 0, "loads_failed": 0, "blocks_loaded": 0, "blocks_reused": 0, "malformed": 0,
                      "refused": 0}

    # -- lifecycle
    def register_kv_caches(self, kv_cache: KVCacheManager, wake: Callable[[], None]) -> None:
        self.kv = kv_cache
        self._wake = wake

    def start(self, model_name: str, config: ModelConfig, timeout: float = 30.0) -> None:
        """Start the side channel (prefill: bind; decode: connect and handshake, raising HandshakeRefused)."""
        if self.kv is None:
            raise RuntimeError("create the engine (it registers its KV cache) before starting the connector")
        self.layout = KVLayout.of(model_name, config, self.kv)
        if self.backend == "nixl":  # raises NixlUnavailable (saying how to install it) when absent
            self.nixl = NixlBackend(f"pyagent-{self.role}-{self.engine_id}", self.kv)
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="pyagent-kv", daemon=True)
        self._thread.start()
        ready.result(timeout)
        if self.role == "decode":
            self._call(self._handshake(), timeout + 5)

    def _run(self, ready: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:
            ready.set_exception(exc)
            loop.close()
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(self.transport.close())
            loop.close()

    async def _open(self) -> None:
        t = self.transport
        if self.role == "prefill":
            t.register("kv.handshake", self._on_handshake)
            t.register("kv.read", self._on_read)
            t.register("kv.check", self._on_check)
            t.register("kv.done", self._on_done)
            await t.start()
            asyncio.get_running_loop().create_task(self._expire_leases())
        else:
            await t.start(serve=False)
            assert self.peer is not None
            t.connect(PEER, self.peer.host, self.peer.port, self.peer.server_key)

    def _call(self, coro: Any, timeout: float) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def endpoint(self) -> str:
        return self.transport.endpoint

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)

    # -- scheduler side
    def get_num_new_matched_tokens(self, request: RequestView, num_local_computed_tokens: int) -> RemoteMatch | None:
        params = request.kv_transfer_params
        if self.role != "decode" or not isinstance(params, dict) or params.get("do_remote_prefill") is not True:
            return None
        assert self.layout is not None
        try:
            remote = RemotePrefill.from_params(params, self.layout.block_size)
        except KVProtocolError as exc:
            log.warning("request %s: ignoring its kv_transfer_params (%s); computing the prompt here",
                        request.request_id, exc)
            return None
        if remote.num_tokens != len(request.token_ids) or remote.prompt_digest != prompt_digest(request.token_ids):
            log.warning("request %s: the prefill peer's prompt differs from ours; computing it here",
                        request.request_id)
            self._submit(self._release_remote(remote))
            return None
        return RemoteMatch(remote.num_tokens, remote.first_token)

    def update_state_after_alloc(self, request: RequestView, block_ids: Sequence[int], num_local_blocks: int) -> None:
        assert self.layout is not None and isinstance(request.kv_transfer_params, dict)
        remote = RemotePrefill.from_params(request.kv_transfer_params, self.layout.block_size)
        load = _Load(request.request_id, remote, list(remote.block_ids[num_local_blocks:]),
                     list(block_ids[num_local_blocks:]))
        self.stats["blocks_reused"] += num_local_blocks
        with self._lock:
            self._inflight.add(request.request_id)
            self._queued.append(load)

    def request_finished(self, request: RequestView, block_ids: Sequence[int], *, aborted: bool
                         ) -> tuple[bool, dict[str, Any] | None]:
        rid = request.request_id
        if self.role == "decode":
            with self._lock:
                if rid in self._inflight:  # a load still writes into these blocks: free them when it ends
                    return True, None
            params = request.kv_transfer_params
            if request.remote_match is None and isinstance(params, dict) and params.get("do_remote_prefill"):
                # finished (aborted) before its load started: let the prefill peer free its lease now
                with contextlib.suppress(KVProtocolError):
                    assert self.layout is not None
                    self._submit(self._release_remote(RemotePrefill.from_params(params, self.layout.block_size)))
            return False, None
        if aborted or not wants_remote_decode(request.kv_transfer_params) or not block_ids:
            return False, None
        prompt = request.prompt_token_ids
        digest = prompt_digest(prompt)
        self.leases.grant(rid, block_ids, digest)
        remote = RemotePrefill(self.engine_id, rid, tuple(block_ids), len(prompt), request.token_ids[len(prompt)],
                               digest)
        return True, remote.to_params()

    # -- worker side
    def start_load_kv(self) -> None:
        with self._lock:
            queued, self._queued = self._queued, []
        for load in queued:
            self._submit(self._load(load))

    def get_finished(self) -> TransferUpdate:
        with self._lock:
            loaded, self._loaded = frozenset(self._loaded), set()
            failed, self._failed = frozenset(self._failed), set()
        return TransferUpdate(sent=self.leases.drain(), loaded=loaded, failed=failed)

    def _submit(self, coro: Any) -> None:
        loop = self._loop
        if loop is None:
            coro.close()
            return
        asyncio.run_coroutine_threadsafe(coro, loop)

    # -- decode side: loads
    async def _handshake(self) -> None:
        assert self.layout is not None
        hello = {"version": HANDSHAKE_VERSION, "engine_id": self.engine_id, "layout": self.layout.to_wire(),
                 "backend": self.backend}
        try:
            reply = await self.transport.request(PEER, "kv.handshake", hello, timeout=10.0)
        except TransportError as exc:
            raise HandshakeRefused(f"the prefill peer did not complete the handshake: {exc}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise HandshakeRefused("the prefill peer answered the handshake with a malformed message")
        try:
            theirs = KVLayout.from_wire(reply.get("layout"))
        except KVProtocolError as exc:
            raise HandshakeRefused(f"the prefill peer sent a malformed layout: {exc}") from None
        reason = self.layout.mismatch(theirs)  # worded from this side, whichever side refused
        if not reply["ok"] or reason is not None:
            raise HandshakeRefused(f"the prefill peer's KV layout is incompatible: {reason or reply.get('reason')}")
        engine = reply.get("engine_id")
        if self.nixl is not None:
            try:
                self.nixl.add_peer(reply.get("nixl"))
            except KVProtocolError:
                raise HandshakeRefused("this instance reads over NIXL but the prefill peer offers none "
                                       "(start it with --kv-backend nixl)") from None
        self._peer_engine = engine if isinstance(engine, str) else None

    async def _load(self, load: _Load) -> None:
        ok = False
        try:
            if load.remote.engine_id != self._peer_engine:  # the peer restarted since our handshake
                await self._handshake()
                if load.remote.engine_id != self._peer_engine:
                    raise HandshakeRefused("the blocks were leased by another prefill instance")
            await asyncio.wait_for(self._read_blocks(load), self.lease_timeout / 2)
            ok = True
        except (TransportError, HandshakeRefused, KVProtocolError, TimeoutError, ValueError) as exc:
            log.warning("request %s: loading its KV from the prefill peer failed (%s); computing it here",
                        load.request_id, exc)
        finally:
            with self._lock:
                self._inflight.discard(load.request_id)
                (self._loaded if ok else self._failed).add(load.request_id)
                self.stats["loads" if ok else "loads_failed"] += 1
                if ok:
                    self.stats["blocks_loaded"] += len(load.local_blocks)
            self._wake()
        await self._release_remote(load.remote)

    async def _read_blocks(self, load: _Load) -> None:
        kv, layout = self.kv, self.layout
        assert kv is not None and layout is not None
        if not load.remote_blocks:
            return
        if self.nixl is not None:
            # NIXL reads raw memory, so first have the peer confirm this lease (request, prompt, blocks)
            await self.transport.request(PEER, "kv.check", {
                "request_id": load.remote.request_id, "digest": load.remote.prompt_digest,
                "blocks": load.remote_blocks}, timeout=self.lease_timeout / 2)
            await self.nixl.read(load.remote_blocks, load.local_blocks, load.remote.request_id.encode(),
                                 self.lease_timeout / 2)
            return
        per_chunk = max(1, READ_CHUNK_BYTES // (2 * layout.block_bytes))
        for i in range(0, len(load.remote_blocks), per_chunk):
            remote, local = load.remote_blocks[i:i + per_chunk], load.local_blocks[i:i + per_chunk]
            data = await self.transport.request(PEER, "kv.read", {
                "request_id": load.remote.request_id, "digest": load.remote.prompt_digest, "blocks": remote},
                timeout=self.lease_timeout / 2)
            if not isinstance(data, bytes) or len(data) != 2 * layout.block_bytes * len(remote):
                raise KVProtocolError("kv.read answered with the wrong number of bytes")
            shape = (2, layout.num_layers, len(remote), layout.num_kv_heads, layout.block_size, layout.head_dim)
            arr = np.frombuffer(data, dtype=kv.k_cache.dtype).reshape(shape)
            kv.k_cache[:, local] = arr[0]
            kv.v_cache[:, local] = arr[1]

    async def _release_remote(self, remote: RemotePrefill) -> None:
        with contextlib.suppress(TransportError):
            await self.transport.request(PEER, "kv.done", {"request_id": remote.request_id,
                                                           "digest": remote.prompt_digest}, timeout=5.0)

    # -- prefill side: the side channel
    def _malformed(self, req: WireRequest, exc: Exception) -> KVProtocolError:
        self.stats["malformed"] += 1
        log.warning("dropped a malformed %s from peer %s: %s", req.kind, fingerprint(req.client_key.encode()), exc)
        return KVProtocolError(str(exc))

    def _on_handshake(self, payload: Any, req: WireRequest) -> dict[str, Any]:
        assert self.layout is not None
        peer = fingerprint(req.client_key.encode())
        try:
            if not isinstance(payload, dict) or payload.get("version") != HANDSHAKE_VERSION:
                raise KVProtocolError("not a version-1 handshake map")
            theirs = KVLayout.from_wire(payload.get("layout"))
        except KVProtocolError as exc:
            raise self._malformed(req, exc) from None
        reason = self.layout.mismatch(theirs)
        if reason is not None:
            self.stats["refused"] += 1
            log.warning("refused the handshake of peer %s: %s", peer, reason)
            return {"ok": False, "reason": reason, "layout": self.layout.to_wire()}
        self._verified_peers.add(req.client_key)
        reply = {"ok": True, "engine_id": self.engine_id, "layout": self.layout.to_wire()}
        if self.nixl is not None:
            reply["nixl"] = self.nixl.describe()
        return reply

    def _leased_blocks(self, method: str, payload: Any, req: WireRequest) -> tuple[KVCacheManager, str, str, list[int]]:
        """The checked (request id, digest, blocks) of a read or check from a peer that passed the handshake."""
        kv = self.kv
        assert kv is not None
        try:
            if req.client_key not in self._verified_peers:
                raise KVProtocolError(f"{method} before a successful handshake")
            rid, digest, blocks = _read_request(payload, kv.num_total_blocks)
        except KVProtocolError as exc:
            raise self._malformed(req, exc) from None
        return kv, rid, digest, blocks

    def _on_read(self, payload: Any, req: WireRequest) -> bytes:
        kv, rid, digest, blocks = self._leased_blocks("kv.read", payload, req)

        def copy(ids: Sequence[int]) -> bytes:
            return bytes(np.stack([kv.k_cache[:, list(ids)], kv.v_cache[:, list(ids)]]).tobytes())

        return self.leases.read(rid, digest, blocks, copy)

    def _on_check(self, payload: Any, req: WireRequest) -> bool:
        """A NIXL reader asks whether these blocks are its lease's before it reads them directly."""
        _, rid, digest, blocks = self._leased_blocks("kv.check", payload, req)
        return self.leases.read(rid, digest, blocks, lambda ids: True)

    def _on_done(self, payload: Any, req: WireRequest) -> bool:
        if not isinstance(payload, dict) or not isinstance(payload.get("request_id"), str) or not isinstance(
                payload.get("digest"), str):
            raise self._malformed(req, KVProtocolError("kv.done needs a request_id and the prompt digest"))
        released = self.leases.release(payload["request_id"], payload["digest"])
        if released:
            self._wake()
        return released

    async def _expire_leases(self) -> None:
        while True:
            await asyncio.sleep(min(0.02 if self.nixl is not None else 0.25, self.lease_timeout / 4))
            released = False
            if self.nixl is not None:  # a decode peer's NIXL read ended: its notification names the lease
                for rid in self.nixl.notifications():
                    released = self.leases.release(rid) or released
            if released:
                self._wake()
            before = self.leases.expired
            if self.leases.expire():
                log.warning("%d lease(s) expired: no decode peer read or released them within %g s",
                            self.leases.expired - before, self.lease_timeout)
                self._wake()

    def health(self) -> dict[str, Any]:
        return {"role": self.role, "backend": self.backend, "engine_id": self.engine_id, "side_channel": self.endpoint,
                "leases": len(self.leases), "leases_expired": self.leases.expired,
                "loads_in_flight": len(self._inflight), **self.stats}


def _read_request(payload: Any, num_blocks: int) -> tuple[str, str, list[int]]:
    if not isinstance(payload, dict):
        raise KVProtocolError("kv.read payload is not a map")
    rid, digest, blocks = payload.get("request_id"), payload.get("digest"), payload.get("blocks")
    if not isinstance(rid, str) or not isinstance(digest, str) or not isinstance(blocks, list) or not blocks:
        raise KVProtocolError("kv.read needs a request_id, the prompt digest and a non-empty list of blocks")
    if any(not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < num_blocks for b in blocks):
        raise KVProtocolError(f"kv.read block ids must be integers in 0..{num_blocks - 1}")
    return rid, digest, blocks
