"""Holographic memory: a node's knowledge store replicated to its trusted peers over Voyager.

Anti-entropy by pull, every ``interval`` seconds, with each live trusted peer:

1. ``memory.digest``: this node sends the shards it should hold (rendezvous placement over the
   live members, :mod:`pyagent.memory.placement`, plus any shard it holds anyway, e.g. because
   it wrote to it), their blake3 hashes and its decay-clock vector; the peer merges the clock
   and answers with its own clock and the hashes of those shards it holds *differently*, keeping
   the bytes it advertised.
2. ``memory.shard``: for each differing shard this node asks for the bytes *by hash*. It checks
   the blake3 of what arrives before decoding anything; a mismatch (or a malformed shard, or
   texts from another embedder) is refused, counted and the peer named (``refused``).
   Verified shards are merged entry by entry (:mod:`pyagent.memory.crdt`), many per commit.

So a node only ever fetches shards it lacks or holds stale, a restarted node catches up with the
shards that changed while it was away, and when a node leaves, the placement over the survivors
names new holders for its shards, which pull them from the survivors that still have them. A
node keeps what it holds (placement adds holders, it never deletes a copy), so every item lives
on at least R live nodes once a round has run.

Limits: a write's clock stamp is taken when this node's replicator picks it up (within one
interval), not at the write itself; tombstones are kept (a deleted or pruned fact stays a small
row so that the delete wins everywhere).

Queries (``memory.query``) fan out to every known trusted peer with a deadline; the answers are
combined by :func:`pyagent.memory.fleet_query.combine`, and peers that did not answer in time
are named in the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import blake3

from pyagent.memory.fleet_query import OPS, FleetAnswer, answer, combine
from pyagent.memory.placement import SHARDS, owners
from pyagent.memory.replica import ReplicaStore, ShardError
from pyagent.voyager.links import TrustedLinks
from pyagent.voyager.transport import TransportError, VoyagerTransport

__all__ = ["DEFAULT_REPLICAS", "FleetMemory", "PeerSync", "ReplicationStats"]

DEFAULT_REPLICAS = 2
_SERVED_BYTES = 64 * 1024 * 1024  # advertised shards kept for the peers' fetches (least recent dropped)
_FETCH_BATCH = 32  # shard requests in flight per peer (the transport grants 64 credits)
log = logging.getLogger(__name__)


@dataclass
class PeerSync:
    """What this node last learned from one peer."""

    name: str
    last_sync: float | None = None  # monotonic time of the last completed pull
    behind: int = 0  # shards that differed in the last pull


@dataclass
class ReplicationStats:
    rounds: int = 0
    shards_fetched: int = 0
    bytes_fetched: int = 0
    entries_merged: int = 0
    shards_changed_meanwhile: int = 0
    refused: list[str] = field(default_factory=list)  # "peer: reason"
    peers: dict[str, PeerSync] = field(default_factory=dict)


def _threaded(handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def run(payload: Any, request: Any) -> Any:
        return await asyncio.to_thread(handler, payload, request)

    return run


def _pairs(value: Any, what: str) -> dict[int, bytes]:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list of [shard, hash] pairs")
    out: dict[int, bytes] = {}
    for item in value:
        if (not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool) or not isinstance(item[0], int)
                or not 0 <= item[0] < SHARDS or not isinstance(item[1], bytes) or len(item[1]) != 32):
            raise ValueError(f"{what} must be a list of [shard, 32-byte hash] pairs")
        out[item[0]] = item[1]
    return out


class FleetMemory:
    """Replication and fleet queries for one node (``replica``) or a client without a store."""

    def __init__(
        self,
        transport: VoyagerTransport,
        links: TrustedLinks,
        *,
        node_id: str,
        name: str,
        replica: ReplicaStore | None = None,
        replicas: int = DEFAULT_REPLICAS,
        interval: float = 0.5,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"--replicas must be at least 1, got {replicas}")
        self.transport = transport
        self.links = links
        self.node_id = node_id
        self.name = name
        self.replica = replica
        self.replicas = replicas
        self.interval = interval
        self.on_event = on_event
        self.stats = ReplicationStats()
        self._caught_up = False
        self._stopping = False
        self._served: OrderedDict[bytes, bytes] = OrderedDict()  # advertised shard bytes by blake3
        self._served_bytes = 0
        self._served_lock = threading.Lock()
        self._started = time.monotonic()

    def register(self) -> None:
        """Serve the memory requests on this node's transport (call before it starts).

        The handlers do SQLite work; they run in worker threads so the event loop keeps
        answering heartbeats while a big shard is merged or a store is stamped.
        """
        for kind, handler in (("memory.digest", self._handle_digest), ("memory.shard", self._handle_shard),
                              ("memory.query", self._handle_query), ("memory.status", self._handle_status)):
            self.transport.register(kind, _threaded(handler))

    # -- placement -------------------------------------------------------------------------------

    def members(self) -> list[str]:
        return sorted({self.node_id, *(p.node_id for p in self.links.live())})

    def owned(self, members: list[str] | None = None) -> list[int]:
        live = members if members is not None else self.members()
        return [s for s in range(SHARDS) if self.node_id in owners(s, live, self.replicas)]

    # -- server side -----------------------------------------------------------------------------

    def _need_replica(self) -> ReplicaStore:
        if self.replica is None:
            raise ValueError("this node keeps no knowledge store")
        return self.replica

    def _handle_digest(self, payload: Any, request: Any) -> dict[str, Any]:
        replica = self._need_replica()
        if not isinstance(payload, dict):
            raise ValueError("memory.digest takes a map")
        theirs = _pairs(payload.get("hashes", []), "hashes")
        shards = payload.get("shards", [])
        if not isinstance(shards, list) or not all(isinstance(s, int) and 0 <= s < SHARDS for s in shards):
            raise ValueError("shards must be a list of shard numbers")
        clock = payload.get("clock", {})
        if not isinstance(clock, dict):
            raise ValueError("clock must be a map")
        replica.merge_clock(clock)
        mine = replica.shard_hashes(shards)
        differ = [(s, h) for s, h in sorted(mine.items()) if theirs.get(s) != h]
        for shard, digest in differ:  # keep what was advertised: it is asked for by hash next
            self._offer(digest, replica.shard_bytes(shard, stamped=True))
        return {"clock": replica.clock_vector(), "differ": [[s, h] for s, h in differ],
                "embedder": replica.store.get_meta("embedder")}

    def _offer(self, digest: bytes, data: bytes) -> None:
        if blake3.blake3(data).digest() != digest:
            return  # the shard changed between hashing and reading: the next round advertises it anew
        with self._served_lock:
            if digest not in self._served:
                self._served_bytes += len(data)
            self._served[digest] = data
            self._served.move_to_end(digest)
            while self._served_bytes > _SERVED_BYTES and len(self._served) > 1:
                _, old = self._served.popitem(last=False)
                self._served_bytes -= len(old)

    def _handle_shard(self, payload: Any, request: Any) -> dict[str, Any]:
        replica = self._need_replica()
        if not isinstance(payload, dict):
            raise ValueError("memory.shard takes a map")
        wanted = _pairs([[payload.get("shard"), payload.get("hash")]], "shard")
        shard, digest = next(iter(wanted.items()))
        with self._served_lock:
            data = self._served.get(digest)
        if data is None:
            if replica.shard_hashes([shard]).get(shard) != digest:
                return {"changed": True}
            data = replica.shard_bytes(shard)
        return {"data": data}

    def _handle_query(self, payload: Any, request: Any) -> Any:
        replica = self._need_replica()
        if not isinstance(payload, dict) or payload.get("op") not in OPS:
            raise ValueError(f"memory.query takes a map with op one of {', '.join(OPS)}")
        return answer(replica, payload["op"], payload.get("args") or {})

    def _handle_status(self, payload: Any, request: Any) -> dict[str, Any]:
        return self.status()

    def status(self) -> dict[str, Any]:
        """This node's replication state, for ``pyagent memory status --fleet``."""
        replica = self._need_replica()
        now = time.monotonic()
        counts = replica.counts()
        return {
            "name": self.name,
            "node_id": self.node_id,
            **counts,
            "cycle": replica.store.cycle,
            "replicas": self.replicas,
            "owned": len(self.owned()),
            "hashes": [[s, h] for s, h in sorted(replica.shard_hashes().items())],
            "behind": sum(p.behind for p in self.stats.peers.values()),
            "peers": {
                p.name: {"behind": p.behind, "last_sync_s": None if p.last_sync is None else round(now - p.last_sync, 3)}
                for p in self.stats.peers.values()
            },
            "shards_fetched": self.stats.shards_fetched,
            "entries_merged": self.stats.entries_merged,
            "bytes_fetched": self.stats.bytes_fetched,
            "store_bytes": self.store_bytes(),
            "refused": self.stats.refused[-20:],
        }

    def store_bytes(self) -> int:
        """The size of everything this node holds, in shard wire form (what a full copy would cost)."""
        return self._need_replica().held_bytes()

    # -- client side: anti-entropy ---------------------------------------------------------------

    def stop(self) -> None:
        """End :meth:`run` at its next step (call before the transport closes)."""
        self._stopping = True

    async def run(self) -> None:
        """Pull from every live peer every ``interval`` seconds until stopped or cancelled."""
        while not self._stopping:
            try:
                await self.sync_round()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad round (a locked file, a peer gone) must not end replication
                if self._stopping:
                    return
                log.exception("memory replication round failed")
            await asyncio.sleep(self.interval)

    async def sync_round(self) -> int:
        """One pull from every live peer; returns the number of shards fetched."""
        replica = self._need_replica()
        live = self.links.live()
        members = sorted({self.node_id, *(p.node_id for p in live)})
        # Shards this node holds without owning them (it wrote to them) are pulled too: otherwise
        # its partial copy would differ from the owners' for ever and be fetched every round.
        mine = sorted(set(self.owned(members)) | set(await asyncio.to_thread(replica.shard_hashes)))
        fetched = 0
        complete = bool(live)
        for peer in live:
            try:
                # hashes as of now: what the previous peer sent is not fetched again from this one
                hashes = await asyncio.to_thread(replica.shard_hashes, mine)
                fetched += await self._pull(peer.node_id, peer.name, mine, hashes)
            except TransportError as exc:
                complete = False
                log.info("memory pull from %s failed: %s", peer.name, exc)
        self.stats.rounds += 1
        if complete and not self._caught_up and all(p.behind == 0 for p in self.stats.peers.values()):
            self._caught_up = True
            full = await asyncio.to_thread(self.store_bytes)
            self._emit(
                f"memory caught up in {time.monotonic() - self._started:.2f}s: fetched "
                f"{self.stats.shards_fetched} shard(s), {self.stats.bytes_fetched} bytes of a "
                f"{full}-byte store ({replica.counts()['items']} items)"
            )
        return fetched

    async def _pull(self, peer_id: str, name: str, mine: list[int], hashes: Mapping[int, bytes]) -> int:
        replica = self._need_replica()
        sync = self.stats.peers.setdefault(peer_id, PeerSync(name))
        sync.name = name
        reply = await self.transport.request(
            peer_id, "memory.digest",
            {"shards": mine, "hashes": [[s, h] for s, h in sorted(hashes.items())],
             "clock": await asyncio.to_thread(replica.clock_vector)},
            timeout=10.0,
        )
        if not isinstance(reply, dict) or not isinstance(reply.get("clock"), dict):
            raise ShardError(f"{name} sent a malformed digest", name)
        await asyncio.to_thread(replica.merge_clock, reply["clock"])
        differ = _pairs(reply.get("differ", []), "differ")
        wanted = [(s, h) for s, h in sorted(differ.items()) if s in set(mine)]
        sync.behind = len(wanted)
        fetched = 0
        for start in range(0, len(wanted), _FETCH_BATCH):
            chunk = wanted[start : start + _FETCH_BATCH]
            replies = await asyncio.gather(*(
                self.transport.request(peer_id, "memory.shard", {"shard": s, "hash": h}, timeout=30.0)
                for s, h in chunk))
            batch: list[tuple[bytes, bytes]] = []
            for (shard, digest), got in zip(chunk, replies, strict=True):
                if isinstance(got, dict) and got.get("changed"):
                    self.stats.shards_changed_meanwhile += 1  # asked again next round
                    continue
                data = got.get("data") if isinstance(got, dict) else None
                if not isinstance(data, bytes):
                    self._refuse(name, f"shard {shard}: malformed reply")
                    continue
                self.stats.bytes_fetched += len(data)
                batch.append((data, digest))
            # one commit for the whole chunk: a durable commit per shard would cost an fsync each
            embedder = reply.get("embedder")
            changed, refused = await asyncio.to_thread(
                replica.merge_shards, batch, peer=name, embedder=embedder if isinstance(embedder, str) else None)
            self.stats.entries_merged += changed
            for exc in refused:
                self._refuse(name, str(exc))
            merged = len(batch) - len(refused)
            self.stats.shards_fetched += merged
            fetched += merged
            sync.behind -= merged
        sync.last_sync = time.monotonic()
        return fetched

    def _refuse(self, peer: str, reason: str) -> None:
        self.stats.refused.append(f"{peer}: {reason}")
        del self.stats.refused[:-100]
        self._emit(f"memory refused a shard from {peer}: {reason}")
        log.warning("memory refused a shard from %s: %s", peer, reason)

    def _emit(self, line: str) -> None:
        if self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event(line)

    # -- fleet-wide queries ----------------------------------------------------------------------

    async def query(self, op: str, args: Mapping[str, Any], *, timeout: float = 1.0) -> FleetAnswer:
        """Ask this node (if it has a store) and every known trusted peer; combine what arrives in time."""
        if op not in OPS:
            raise ValueError(f"unknown fleet query {op!r}; one of {', '.join(OPS)}")
        peers = self.links.known()
        answers: list[Any] = []
        answered: list[str] = []
        if self.replica is not None:
            answers.append(await asyncio.to_thread(answer, self.replica, op, args))
            answered.append(self.name)
        replies = await asyncio.gather(
            *(self.transport.request(p.node_id, "memory.query", {"op": op, "args": dict(args)}, timeout=timeout)
              for p in peers),
            return_exceptions=True,
        )
        missing: list[str] = []
        errors: dict[str, str] = {}
        for peer, reply in zip(peers, replies, strict=True):
            if isinstance(reply, BaseException):
                if not isinstance(reply, TransportError | ValueError):
                    raise reply
                missing.append(peer.name)
                errors[peer.name] = f"{type(reply).__name__}: {reply}"
            else:
                answers.append(reply)
                answered.append(peer.name)
        return FleetAnswer(op, combine(op, answers, args), tuple(answered), tuple(sorted(missing)), errors)

    async def statuses(self, *, timeout: float = 2.0) -> tuple[list[dict[str, Any]], list[str]]:
        """Every known node's :meth:`status` (this one's first when it has a store), and who did not answer."""
        out = [await asyncio.to_thread(self.status)] if self.replica is not None else []
        peers = self.links.known()
        replies = await asyncio.gather(
            *(self.transport.request(p.node_id, "memory.status", None, timeout=timeout) for p in peers),
            return_exceptions=True,
        )
        missing = []
        for peer, reply in zip(peers, replies, strict=True):
            if isinstance(reply, dict):
                out.append(reply)
            else:
                missing.append(peer.name)
        return out, missing
