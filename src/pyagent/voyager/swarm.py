"""Task teleportation: ``SwarmExecutor`` runs improve tasks on trusted peers found by mDNS.

It implements the fleet's ``Executor`` protocol, so the improve pipeline is unchanged: it hands a
task and the bytes of its files to :meth:`SwarmExecutor.execute` and gets back a ``ChangeSet``,
which it merges through its own ``StateTransaction`` after checking the base hashes (and at
most once, keyed by the change set's digest).

For each task the executor picks a trusted, live peer with free slots (advertised in its mDNS TXT
record, minus what we already sent it), makes sure the peer holds the project's files (a
content-addressed manifest: only blobs the peer lacks are sent), and sends the task with its
``CascadeContext`` (lineage and budget), priority, files and their base hashes. The peer runs the
same agents and gate (``pyagent.pipeline.remote.execute_task_async``) in a worker process and returns the
change set plus its verification. If the peer dies (missed heartbeats), stops, is full or fails,
the task is re-run on another peer or locally; a late reply from a peer given up on is dropped by
the transport, so each execute call yields exactly one change set. Peers get no LLM, so tasks of
LLM agents (refactor, docstring) always run locally. The usage a peer reports is
charged to the task's own ``Budget`` here, so one budget covers the whole run across nodes; a peer
that finds the chain's budget spent when the task would start (wall time runs on there) answers
``BudgetExceeded``, which ends the task with that reason here instead of re-running it elsewhere.

Configuration for ``pyagent improve --swarm``: the node home (keys, trusted list) is
``$PYAGENT_NODE_HOME`` or ``~/.pyagent/node``; mDNS and the transport use
``$PYAGENT_SWARM_INTERFACE`` (default 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.model.errors import BudgetExceeded
from pyagent.model.priority import AgentPriority
from pyagent.pipeline.settings import PipelineSettings
from pyagent.voyager.blobs import blob_hash
from pyagent.voyager.discovery import DiscoveryNode, PeerInfo
from pyagent.voyager.home import NodeHome
from pyagent.voyager.transport import RemoteError, TransportError, VoyagerTransport

if TYPE_CHECKING:
    from pyagent.model.task import AgentTask, ChangeSet
    from pyagent.pipeline.executor import Executor, ExecutorSetup

log = logging.getLogger(__name__)
PUT_CHUNK_BYTES = 4 * 1024 * 1024


class SwarmError(RuntimeError):
    """A task that could run neither on a peer nor locally."""


@dataclass
class SwarmStats:
    remote: Counter[str] = field(default_factory=Counter)  # peer name -> change sets received
    local: int = 0
    rerouted: int = 0
    blobs_sent: int = 0
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "remote": dict(self.remote),
            "local": self.local,
            "rerouted": self.rerouted,
            "blobs_sent": self.blobs_sent,
            "failures": list(self.failures),
        }


class SwarmExecutor:
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        local: Executor | None = None,
        home: NodeHome | str | os.PathLike[str] | None = None,
        interface: str = "127.0.0.1",
        settings: PipelineSettings | None = None,
        baseline: dict[str, Any] | None = None,
        task_timeout: float = 900.0,
        discovery_wait: float = 5.0,
        heartbeat_interval: float = 0.5,
        heartbeat_misses: int = 6,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.local = local
        self.home = home if isinstance(home, NodeHome) else NodeHome(home)
        self.interface = interface
        self.settings = settings if settings is not None else PipelineSettings()
        self.baseline = baseline
        self.task_timeout = task_timeout
        self.discovery_wait = discovery_wait
        self.on_event = on_event
        self.stats = SwarmStats()
        self.transport = VoyagerTransport(
            self.home.keypair(),
            trusted=self.home.trusted_keys,
            host=interface,
            heartbeat_interval=heartbeat_interval,
            heartbeat_misses=heartbeat_misses,
            on_peer_dead=self._on_peer_dead,
        )
        self.discovery: DiscoveryNode | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._inflight: Counter[str] = Counter()
        self._served: set[str] = set()  # peers that returned work to us (their "0 free" may be our own)
        self._peer_blobs: dict[str, set[str]] = {}
        self._hash_cache: dict[str, tuple[tuple[int, int, int], str]] = {}

    # -- lifecycle

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            await self.transport.start(serve=False)
            self.discovery = DiscoveryNode(
                node_id=uuid.uuid4().hex, name="origin", port=None, interfaces=[self.interface]
            )
            await self.discovery.start()
            self._started = True
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.discovery_wait
            while not self._trusted_peers() and loop.time() < deadline:
                await self.discovery.wait_for_peers(len(self.discovery.peers()) + 1, min(0.25, deadline - loop.time()))
            self._emit("peers", peers=[p.name for p in self._trusted_peers()])

    @property
    def summary(self) -> str:
        """One line for the run's report: where the tasks ran."""
        remote = ", ".join(f"{name} {n}" for name, n in sorted(self.stats.remote.items())) or "none"
        return (
            f"swarm: {sum(self.stats.remote.values())} task(s) ran on peers ({remote}), {self.stats.local} "
            f"locally, {self.stats.rerouted} re-routed after a peer failed or was busy"
        )

    async def aclose(self) -> str:
        """Close discovery and transport; returns the summary line for the run's report."""
        if self.discovery is not None:
            await self.discovery.close()
        await self.transport.close()
        return self.summary

    async def __aenter__(self) -> SwarmExecutor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- choosing a peer

    def _trusted_peers(self) -> list[PeerInfo]:
        """Peers that proved they hold a trusted key: their advertised fingerprint is in the trusted
        list AND they answered over a CurveZMQ link made with that key. An advertisement alone (which
        anyone on the LAN can forge, copying a node's name and fingerprint) only starts the handshake."""
        if self.discovery is None:
            return []
        trusted = self.home.trusted_by_fingerprint()
        out = []
        for peer in self.discovery.peers():
            key = trusted.get(peer.fingerprint)
            if key is None:
                continue
            link = self.transport.link(peer.node_id)
            if link is None or link.server_key != key or link.endpoint != f"tcp://{peer.address}:{peer.port}":
                link = self.transport.connect(peer.node_id, peer.address, peer.port, key)  # handshake starts
            if link.verified and link.alive:
                out.append(peer)  # a peer that missed its heartbeats comes back only if it answers again
        return out

    def _pick(self, exclude: set[str], priority: AgentPriority) -> PeerInfo | None:
        best: tuple[int, int, str] | None = None
        chosen = None
        for peer in self._trusted_peers():
            if peer.node_id in exclude:
                continue
            # The advertised free count lags by an mDNS round trip; our own in-flight count does not.
            # With several origins a node may still be full: it says so and we try the next one. A node
            # that says it is full is still asked for a task above Low: it takes the task if it runs
            # lower-priority work (which it freezes), and refuses at once otherwise.
            mine = self._inflight[peer.node_id]
            free = (peer.capacity or peer.slots) - mine
            full = peer.slots == 0 and mine == 0 and peer.node_id not in self._served
            if free <= 0 or (full and priority <= AgentPriority.LOW):
                continue
            rank = (-free, -peer.slots, peer.node_id)
            if best is None or rank < best:
                best, chosen = rank, peer
        return chosen

    def _on_peer_dead(self, peer_id: str) -> None:
        self._emit("peer_dead", peer=peer_id)

    # -- Executor protocol

    @staticmethod
    def _offline_agents() -> frozenset[str]:
        """Agents a peer can run: peers get no LLM, so LLM agents (refactor, docstring) stay here."""
        from pyagent.agents.registry import build_agents

        return frozenset(build_agents(None))

    async def execute(self, task: AgentTask, files: dict[str, bytes]) -> ChangeSet:
        await self.start()
        tried: set[str] = set()
        if task.agent not in self._offline_agents():
            tried.update(p.node_id for p in self._trusted_peers())  # needs this machine's LLM
        while (peer := self._pick(tried, task.priority)) is not None:
            tried.add(peer.node_id)
            self._inflight[peer.node_id] += 1
            try:
                change = await self._run_on(peer, task, files)
            except (TransportError, SwarmError, ValueError) as exc:
                if isinstance(exc, RemoteError) and exc.kind == "BudgetExceeded":  # spent everywhere
                    raise BudgetExceeded(f"{exc.message} (refused by {peer.name})") from None
                self.stats.rerouted += 1
                self.stats.failures.append(f"{task.id} on {peer.name}: {exc}")
                self._emit("rerouted", task=task.id, peer=peer.name, error=str(exc))
                continue
            finally:
                self._inflight[peer.node_id] -= 1
            self._served.add(peer.node_id)
            self._charge(task, change)
            self.stats.remote[peer.name] += 1
            self._emit("remote_done", task=task.id, peer=peer.name)
            return change
        if self.local is None:
            raise SwarmError(f"task {task.id}: no trusted peer with a free slot, and no local executor")
        self.stats.local += 1
        self._emit("local", task=task.id)
        return await self.local.execute(task, files)

    def _charge(self, task: AgentTask, change: ChangeSet) -> None:
        """The peer spent tokens/cost on our behalf: charge them to the task's one budget."""
        if change.usage.tokens or change.usage.cost:
            task.context.budget.charge(tokens=change.usage.tokens, cost=change.usage.cost)

    async def _run_on(self, peer: PeerInfo, task: AgentTask, files: dict[str, bytes]) -> ChangeSet:
        from pyagent.model.task import ChangeSet, content_hash

        key = self.home.trusted_by_fingerprint().get(peer.fingerprint)
        if key is None:
            raise SwarmError(f"{peer.name} is no longer trusted")
        link = self.transport.connect(peer.node_id, peer.address, peer.port, key)
        if not link.alive:
            raise SwarmError(f"{peer.name} is not answering heartbeats")
        manifest = await asyncio.to_thread(self._manifest)
        bases = {path: content_hash(data) for path, data in files.items()}
        wire = task.to_wire()
        if self.baseline is not None:
            wire["params"] = {**wire["params"], "baseline": self.baseline}
        payload = {
            "task": wire,
            "files": files,
            "base_hashes": bases,
            "manifest": manifest,
            "pipeline": self.settings.to_wire(),
        }
        for attempt in (1, 2):
            await self._sync_blobs(peer, manifest)
            try:
                reply = await self.transport.request(peer.node_id, "task.run", payload, timeout=self.task_timeout)
                break
            except RemoteError as exc:
                if exc.kind != "MissingBlobs" or attempt == 2:
                    raise
                self._peer_blobs.pop(peer.node_id, None)  # the node restarted: resend what it lacks
        change = ChangeSet.from_wire(reply)
        if change.task_id != task.id:
            raise SwarmError(f"{peer.name} answered task {task.id} with a change set for {change.task_id}")
        for path, digest in change.base_hashes.items():
            if path in bases and bases[path] != digest:
                raise SwarmError(f"{peer.name} computed {path} from another base than the one sent")
        ran = change.verification.remote
        if ran is None or ran.root_task_id != task.context.root_task_id:
            raise SwarmError(f"{peer.name} ran task {task.id} under another lineage")
        return replace(change, verification=replace(change.verification, node=peer.name))

    # -- project files

    def _manifest(self) -> dict[str, str]:
        from pyagent.pipeline.workspace import project_files

        manifest: dict[str, str] = {}
        for rel in project_files(self.root):
            path = self.root / rel
            try:
                st = path.stat()
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                cached = self._hash_cache.get(rel)
                if cached is not None and cached[0] == stamp:
                    manifest[rel] = cached[1]
                    continue
                digest = blob_hash(path.read_bytes())
            except OSError:
                continue  # vanished or unreadable: not part of the snapshot
            self._hash_cache[rel] = (stamp, digest)
            manifest[rel] = digest
        return manifest

    async def _sync_blobs(self, peer: PeerInfo, manifest: dict[str, str]) -> None:
        known = self._peer_blobs.setdefault(peer.node_id, set())
        unknown = sorted(set(manifest.values()) - known)
        if not unknown:
            return
        missing = set(await self.transport.request(peer.node_id, "blobs.missing", unknown, timeout=60))
        by_hash = {digest: rel for rel, digest in manifest.items()}
        chunk: dict[str, bytes] = {}
        size = 0
        for digest in sorted(missing):
            data = (self.root / by_hash[digest]).read_bytes()
            if blob_hash(data) != digest:
                raise SwarmError(f"{by_hash[digest]} changed while it was being sent")
            if chunk and size + len(data) > PUT_CHUNK_BYTES:
                await self.transport.request(peer.node_id, "blobs.put", chunk, timeout=120)
                chunk, size = {}, 0
            chunk[digest] = data
            size += len(data)
        if chunk:
            await self.transport.request(peer.node_id, "blobs.put", chunk, timeout=120)
        self.stats.blobs_sent += len(missing)
        known.update(unknown)

    def _emit(self, kind: str, **data: Any) -> None:
        if self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event(kind, data)


def swarm_executor_factory(setup: ExecutorSetup) -> SwarmExecutor:
    """What ``pyagent improve --swarm`` calls (the CLI passes it as ``ImproveOptions.executor_factory``)."""
    baseline = setup.baseline.to_dict() if setup.baseline is not None else None
    return SwarmExecutor(
        setup.root,
        local=setup.local,
        home=os.environ.get("PYAGENT_NODE_HOME") or None,
        interface=os.environ.get("PYAGENT_SWARM_INTERFACE", "127.0.0.1"),
        settings=setup.settings,
        baseline=baseline,
    )
