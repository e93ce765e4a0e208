"""The Voyager node daemon: advertise by mDNS, accept trusted work over ZeroMQ, stop cleanly.

A node owns one :class:`VoyagerTransport` (its ROUTER serves ``task.run`` and ``node.info``)
and one :class:`DiscoveryNode` (its TXT record carries the number of free task slots, updated
as tasks start and finish). Each task runs in a worker process (:mod:`pyagent.voyager.worker`),
scheduled by the fleet's one scheduler with the task's own priority: a node serving several origins
takes a task when a slot is free, or when a running task has a lower priority, which is then frozen
(its commands stopped, its timeout paused) until a slot frees again; otherwise it answers NoFreeSlots
and the origin routes the task elsewhere. The task's chain budget travels with it (its spend and its
wall clock carry on from the origin's): when the task gets its slot the node checks it, and a chain
whose budget is spent is answered ``BudgetExceeded`` instead of run.

Stopping (SIGINT/SIGTERM, or :meth:`VoyagerNode.stop`) is bounded to well under 2 s: refuse new
work, say goodbye on mDNS, give running tasks a short grace period, then kill their workers and
answer their origins with a ``Cancelled`` error (the work is handed back and re-run elsewhere),
close every socket with LINGER 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pyagent import __version__
from pyagent.fleet.core import RUNNING, FleetManager, TaskControl, TaskHandle
from pyagent.model.budget import Budget
from pyagent.model.context import CascadeContext, ContextWireError
from pyagent.model.priority import AgentPriority
from pyagent.voyager.blobs import BlobError, BlobStore, blob_hash, check_relpath
from pyagent.voyager.discovery import DiscoveryNode, PeerEvent, PeerInfo
from pyagent.voyager.home import NodeHome
from pyagent.voyager.transport import VoyagerTransport
from pyagent.voyager.worker import run_in_worker

TaskRunner = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
TaskEvent = Callable[[str, str, str], None]  # (started|done|failed|handed_back, task id, detail)


class NodeStopping(Exception):
    """The node is shutting down and takes no new work."""


class NoFreeSlots(Exception):
    """Every task slot of the node is busy."""


class MissingBlobs(Exception):
    """The task's manifest names files this node was never sent; send them and retry."""


class BaseHashMismatch(Exception):
    """A task file's bytes do not match the base hash the origin recorded for it."""


@dataclass
class NodeConfig:
    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "node")
    interface: str = "127.0.0.1"
    port: int = 0
    slots: int = 2
    home: str | None = None
    task_timeout: float = 600.0
    grace: float = 0.5
    discovery: bool = True
    heartbeat_interval: float = 0.5
    heartbeat_misses: int = 6


class VoyagerNode:
    def __init__(
        self,
        config: NodeConfig | None = None,
        *,
        runner: TaskRunner | None = None,
        on_peer: Callable[[PeerEvent, PeerInfo], None] | None = None,
        on_task: TaskEvent | None = None,
    ) -> None:
        self.config = config or NodeConfig()
        self.home = NodeHome(self.config.home)
        self.keypair = self.home.keypair()
        self.node_id = self.home.node_id()
        self.runner: TaskRunner = runner or self._run_in_worker
        self.transport = VoyagerTransport(
            self.keypair,
            trusted=self._trusted_keys,
            host=self.config.interface,
            port=self.config.port,
            heartbeat_interval=self.config.heartbeat_interval,
            heartbeat_misses=self.config.heartbeat_misses,
        )
        self.transport.register("task.run", self._handle_task)
        self.transport.register("node.info", self._handle_info)
        self.transport.register("blobs.missing", self._handle_blobs_missing)
        self.transport.register("blobs.put", self._handle_blobs_put)
        self.blobs: BlobStore | None = None
        self._on_task = on_task
        self.discovery: DiscoveryNode | None = None
        self._on_peer = on_peer
        self.fleet = FleetManager(self.config.slots)
        self._running: dict[asyncio.Future[dict[str, Any]], TaskHandle[dict[str, Any]]] = {}
        self._stopping = False
        self._stopped = asyncio.Event()
        self._closers: list[Callable[[], object]] = []
        self.tasks_done = 0

    def _trusted_keys(self) -> set[bytes]:
        """The trusted list plus this node's own key: a tool run from the same home (``pyagent memory
        status --fleet``, an improve run asking the fleet's memory) is this node's own operator."""
        return self.home.trusted_keys() | {self.keypair.public}

    @property
    def free_slots(self) -> int:
        return 0 if self._stopping else max(0, self.config.slots - len(self._running))

    async def start(self) -> int:
        self.blobs = BlobStore()
        port = await self.transport.start()
        if self.config.discovery:
            self.discovery = DiscoveryNode(
                node_id=self.node_id,
                name=self.config.name,
                port=port,
                fingerprint=self.keypair.fingerprint,
                slots=self.free_slots,
                capacity=self.config.slots,
                interfaces=[self.config.interface],
                on_change=self._on_peer,
            )
            try:
                await self.discovery.start()
            except BaseException:
                await self.transport.close()
                self.blobs.close()
                raise
        return port

    async def serve_forever(self, *, install_signals: bool = True) -> None:
        """Run until SIGINT/SIGTERM (or :meth:`stop`), then shut down cleanly."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):  # Windows: KeyboardInterrupt path
                    loop.add_signal_handler(sig, self._stopped.set)
        try:
            await self._stopped.wait()
        finally:
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError):
                        loop.remove_signal_handler(sig)
            await self.close()

    def stop(self) -> None:
        self._stopped.set()

    def on_close(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` first thing when the node closes (stop a service using its transport)."""
        self._closers.append(callback)

    async def close(self) -> None:
        self._stopping = True
        self._stopped.set()
        for callback in self._closers:
            with contextlib.suppress(Exception):
                callback()
        self._closers.clear()
        if self.discovery is not None:
            await self.discovery.close()
        if self._running:
            await asyncio.wait(self._running, timeout=self.config.grace)
        for job, handle in list(self._running.items()):
            handle.cancel()  # kills the worker; the origin gets "Cancelled" and re-routes
            job.cancel()
        if self._running:
            await asyncio.wait(self._running, timeout=1.0)
        await self.transport.close()
        if self.blobs is not None:
            self.blobs.close()

    # -- request handlers

    def _handle_info(self, payload: Any, request: Any) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "node_id": self.node_id,
            "version": __version__,
            "slots": self.config.slots,
            "free_slots": self.free_slots,
            "tasks_done": self.tasks_done,
            "pid": os.getpid(),
            "stats": self.transport.stats.to_dict(),
        }

    def _handle_blobs_missing(self, payload: Any, request: Any) -> list[str]:
        if self.blobs is None or not isinstance(payload, list) or not all(isinstance(h, str) for h in payload):
            raise ValueError("blobs.missing takes a list of hashes")
        return self.blobs.missing(payload)

    def _handle_blobs_put(self, payload: Any, request: Any) -> int:
        if self.blobs is None or not isinstance(payload, dict):
            raise ValueError("blobs.put takes a map of hash to bytes")
        for digest, data in payload.items():
            if not isinstance(digest, str) or not isinstance(data, bytes):
                raise ValueError("blobs.put takes a map of hash to bytes")
            self.blobs.put(digest, data)
        return len(payload)

    def _preemptable(self, priority: AgentPriority) -> bool:
        """A running (not frozen) task has a lower priority than ``priority``: the fleet would freeze it."""
        return any(t.state == RUNNING and t.priority < priority for t in self.fleet.active())

    def _check_task(self, payload: Any) -> tuple[str, AgentPriority, Budget]:
        """Validate a task.run payload before spending a slot on it; returns the task id, its priority
        and its chain's budget."""
        if not isinstance(payload, dict):
            raise ValueError("task.run payload must be a map")
        task, files, bases, manifest = (payload.get(k) for k in ("task", "files", "base_hashes", "manifest"))
        if not isinstance(task, dict) or not isinstance(task.get("id"), str):
            raise ValueError("task.run needs a task with an id")
        try:
            priority = AgentPriority.parse(task.get("priority", AgentPriority.STANDARD))
        except ValueError as exc:
            raise ValueError(f"task.run: {exc}") from None
        try:
            budget = CascadeContext.from_wire(task.get("context")).budget
        except ContextWireError as exc:
            raise ValueError(f"task.run: {exc}") from None
        if not isinstance(files, dict) or not isinstance(bases, dict) or not isinstance(manifest, dict):
            raise ValueError("task.run needs files, base_hashes and manifest maps")
        for path, data in files.items():
            if not isinstance(path, str) or not isinstance(data, bytes):
                raise ValueError("task files must map paths to bytes")
            check_relpath(path)
            if bases.get(path) != blob_hash(data):
                raise BaseHashMismatch(f"{path}: bytes received do not match the origin's base hash")
        for path, digest in manifest.items():
            if not isinstance(path, str) or not isinstance(digest, str):
                raise ValueError("manifest must map paths to hashes")
            check_relpath(path)
        assert self.blobs is not None
        missing = self.blobs.missing(manifest.values())
        if missing:
            raise MissingBlobs(",".join(missing[:2000]))
        return str(task["id"]), priority, budget

    async def _handle_task(self, payload: Any, request: Any) -> dict[str, Any]:
        if self._stopping:
            raise NodeStopping("node is stopping; run the task elsewhere")
        try:
            task_id, priority, budget = self._check_task(payload)
        except BlobError as exc:
            raise ValueError(str(exc)) from None
        if self.free_slots <= 0 and not self._preemptable(priority):
            raise NoFreeSlots(f"all {self.config.slots} slots are busy with tasks of this priority or higher")
        assert self.blobs is not None
        work = {**payload, "blob_dir": str(self.blobs.root)}
        client = request.client_key[:8] if hasattr(request, "client_key") else ""

        async def run(control: TaskControl) -> dict[str, Any]:
            budget.check()  # the chain's one budget, as spent at the origin plus the time since
            self._event("started", task_id, client)
            return await self.runner(work)

        # The fleet's timeout stops while the task is frozen, so the worker gets none of its own.
        handle = self.fleet.submit(
            f"task {task_id}", run, priority=priority, timeout=self.config.task_timeout, kind="task.run"
        )
        job = asyncio.ensure_future(handle.result())
        self._running[job] = handle
        await self._advertise_slots()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            result = await job
            self.tasks_done += 1
            self._event("done", task_id, f"{loop.time() - t0:.2f}s")
            return result
        except asyncio.CancelledError:
            handle.cancel()
            self._event("handed_back", task_id, "node stopping")
            raise
        except Exception as exc:
            self._event("failed", task_id, f"{type(exc).__name__}: {exc}"[:200])
            raise
        finally:
            self._running.pop(job, None)
            if not self._stopping:
                await self._advertise_slots()

    def _event(self, event: str, task_id: str, detail: str) -> None:
        if self._on_task is not None:
            with contextlib.suppress(Exception):
                self._on_task(event, task_id, detail)

    async def _advertise_slots(self) -> None:
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await self.discovery.set_slots(self.free_slots)

    async def _run_in_worker(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await run_in_worker(payload, timeout=None)
