"""``pyagent improve --executor ray[:ADDRESS]``: the run's tasks on a Ray cluster, our scheduler in front.

Ray has no task priorities, so the order stays ours: the run's fleet is sized to the cluster's free
CPU slots (:meth:`RayExecutor.slots`), so only that many tasks are ever submitted to Ray and the rest
wait in the fleet's priority queue. Preemption is ours too: a task running on Ray registers with its
fleet task's :class:`~pyagent.shell.secure.CommandWatch`, so when the fleet preempts it the Ray task
is cancelled (``ray.cancel(force=True)``) and submitted again from the start when it gets a slot back
(a task's work is a pure function of its inputs, so re-running it is safe).

What runs on a worker is the same work as a local run, built by the same builder from the same
:class:`PipelineSettings`, test baseline and test-impact map (:func:`pyagent.pipeline.remote.execute_task_async`).
The project snapshot is put in Ray's object store once per run; each node fetches it once and
unpacks it once into a private directory that its workers share; a task carries only its own files
and the files merged since the snapshot. The worker returns a ChangeSet; the origin verifies the
governance check again and merges it like a local one (at most once per task).

A worker (or node) that dies mid-task has its task submitted again once (Ray's own retries are off,
so there is exactly one re-run); a second death fails the task with the reason. A task's timeout is
the executor's ``task_timeout`` capped by the wall-time left in its CascadeContext budget; on expiry
(and when the run is cancelled) the Ray task is cancelled. Usage a worker reports is charged to the
task's one budget here. Tasks of LLM agents run on this machine (workers get no LLM).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.model.task import AgentTask, ChangeSet, content_hash
from pyagent.model.verification import RemoteRun, Verdict, Verification
from pyagent.shell.secure import enlist

if TYPE_CHECKING:
    from pyagent.agents.impact import TestImpact
    from pyagent.agents.test_results import TestResults
    from pyagent.pipeline.executor import Executor, ExecutorFactory, ExecutorSetup
    from pyagent.pipeline.settings import PipelineSettings

__all__ = [
    "RAY_INSTALL",
    "RayCluster",
    "RayExecutor",
    "RayTaskLost",
    "RayTaskTimeout",
    "RayUnavailableError",
    "ray_executor_factory",
]

RAY_INSTALL = "pip install 'pyagent[ray]'"
log = logging.getLogger(__name__)


class RayUnavailableError(RuntimeError):
    """Ray is not installed here, or the cluster cannot be reached; the message says what to do."""


class RayTaskTimeout(TimeoutError):
    """A task ran on Ray longer than its timeout; it was cancelled there."""


class RayTaskLost(RuntimeError):
    """A task whose worker died twice (it was re-run once already)."""


def _ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise RayUnavailableError(f"--executor ray needs the optional Ray extra: {RAY_INSTALL} ({exc})") from None


def _worker_died(ray: Any) -> tuple[type[BaseException], ...]:
    """Errors meaning the process (or node) running a task went away, not that the task failed."""
    ex = ray.exceptions
    return (ex.WorkerCrashedError, ex.NodeDiedError, ex.LocalRayletDiedError, ex.OutOfMemoryError)


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once on a ``HOST:PORT`` nobody listens on (``ray.init`` would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in host:
        return  # "auto", "ray://..." and the like: Ray resolves those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayUnavailableError(f"cannot join the Ray cluster at {address}: {exc}") from None


class RayCluster:
    """This process's connection to a Ray cluster; ``close()`` disconnects only if ``connect`` connected."""

    def __init__(self, ray: Any, address: str, owns: bool, cpus_per_task: float) -> None:
        self.ray = ray
        self.address = address
        self.cpus_per_task = cpus_per_task
        self._owns = owns

    @classmethod
    def connect(cls, address: str | None = None, *, cpus_per_task: float = 1.0) -> RayCluster:
        """Join the cluster at ``address`` (``None``: ``$RAY_ADDRESS``, else one ``ray start`` began on this
        machine, else a new local Ray instance: what ``ray.init()`` does)."""
        ray = _ray()
        if ray.is_initialized():
            return cls(ray, address or "this process's Ray", False, cpus_per_task)
        if address is not None:
            _reachable(address)
        try:
            info = ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailableError(f"cannot join the Ray cluster at {address or 'a new local instance'}: {exc}") from None
        return cls(ray, address or str(getattr(info, "address_info", {}).get("address", "local")), True, cpus_per_task)

    def slots(self) -> int:
        """Tasks the cluster can run at once now: its free CPUs over the CPUs one task takes (at least 1)."""
        free = float(self.ray.available_resources().get("CPU", 0.0))
        return max(1, int(free // self.cpus_per_task))

    def alive_nodes(self) -> list[str]:
        return [str(n["NodeID"]) for n in self.ray.nodes() if n.get("Alive")]

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns = False


class _Attempt:
    """One submission of a task to Ray, registered with its fleet task's watch: preempting the fleet
    task cancels it on Ray, resuming the fleet task lets it be submitted again."""

    def __init__(self, ray: Any, ref: Any) -> None:
        self.ray = ray
        self.ref = ref
        self.preempted = False
        self.resumed = asyncio.Event()

    def freeze(self) -> None:
        self.preempted = True
        self.resumed.clear()
        self.ray.cancel(self.ref, force=True)

    def thaw(self) -> None:
        self.resumed.set()


@dataclass
class RayStats:
    submitted: int = 0
    by_node: Counter[str] = field(default_factory=Counter)  # node id -> change sets returned
    reruns: int = 0  # re-submitted after the worker died
    preempted: int = 0  # cancelled on Ray for a higher-priority task, re-run later
    timed_out: int = 0
    local: int = 0  # LLM tasks, run on this machine
    failures: list[str] = field(default_factory=list)


# -- the worker side --------------------------------------------------------------------------

_WORKER_RUNS: dict[str, tuple[Path, PipelineSettings, TestResults | None, TestImpact | None]] = {}


def _private_base() -> Path:
    """This user's directory for unpacked snapshots on a node; refuses one another user could write."""
    base = Path(tempfile.gettempdir()) / f"pyagent-ray-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    st = base.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RuntimeError(f"{base} is not a private directory of this user; remove it")
    return base


def _unpack(key: str, fetch: Callable[[], dict[str, tuple[bytes, int]]]) -> Path:
    """The snapshot's directory on this node, unpacked by the first worker that needs it."""
    from pyagent.pipeline.workspace import safe_relpath

    base = _private_base()
    dest = base / key
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=base))
    try:
        for rel, (data, mode) in fetch().items():
            target = tmp / safe_relpath(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            os.chmod(target, (mode & 0o755) | 0o600)
    except BaseException:
        shutil.rmtree(tmp, True)
        raise
    try:
        os.rename(tmp, dest)
    except OSError:  # another worker of this node was first
        shutil.rmtree(tmp, True)
    return dest


def pyagent_task(
    refs: list[Any], key: str, task_wire: dict[str, Any], overlay: dict[str, bytes]
) -> tuple[dict[str, Any], str]:
    """What a Ray worker runs for one task: the run's pipeline on the node's copy of the snapshot.

    Returns the change set's wire form and the id of the node it ran on."""
    from pyagent.agents.test_results import TestResults
    from pyagent.pipeline.remote import execute_task_async
    from pyagent.pipeline.settings import PipelineSettings

    started = time.time()
    ray = _ray()
    run = _WORKER_RUNS.get(key)
    if run is None or not run[0].is_dir():
        meta = ray.get(refs[1])
        workdir = _unpack(key, lambda: ray.get(refs[0]))
        baseline = TestResults.from_dict(meta["baseline"]) if meta["baseline"] is not None else None
        run = _WORKER_RUNS[key] = (workdir, PipelineSettings.from_wire(meta["settings"]), baseline, meta["impact"])
    workdir, settings, baseline, impact = run
    task = AgentTask.from_wire(task_wire)
    change = asyncio.run(
        execute_task_async(task, overlay, workdir=workdir, settings=settings, baseline=baseline, impact=impact)
    )
    ctx = task.context
    ran = RemoteRun(os.getpid(), ctx.root_task_id, ctx.lineage_ids(), started, time.time())
    change = replace(change, verification=replace(change.verification, remote=ran))
    return change.to_wire(), str(ray.get_runtime_context().get_node_id())


def forget_snapshot(key: str) -> bool:
    """Remove a finished run's snapshot from this node (run by the origin on every node at the end)."""
    _WORKER_RUNS.pop(key, None)
    dest = _private_base() / key
    shutil.rmtree(dest, True)
    return not dest.exists()


# -- the origin side --------------------------------------------------------------------------


def _failed(task: AgentTask, reason: str, files: dict[str, bytes]) -> ChangeSet:
    base = {p: content_hash(b) for p, b in files.items()}
    return ChangeSet(task.id, {}, base, Verification(Verdict.ERROR, reason), reason)


class RayExecutor:
    """Runs improve tasks on a Ray cluster (see the module docstring); implements ``Executor``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        cluster: RayCluster,
        settings: PipelineSettings,
        baseline: TestResults | None = None,
        impact: TestImpact | None = None,
        local: Executor | None = None,
        task_timeout: float = 900.0,
    ) -> None:
        from pyagent.agents.registry import build_agents

        self.root = Path(root)
        self.cluster = cluster
        self.ray = cluster.ray
        self.settings = settings
        self.baseline = baseline
        self.impact = impact
        self.local = local
        self.task_timeout = task_timeout
        self.stats = RayStats()
        self._offline = frozenset(build_agents(None))  # workers get no LLM: LLM agents stay here
        self._remote = self.ray.remote(num_cpus=cluster.cpus_per_task, max_retries=0)(pyagent_task)
        self._nonce = uuid.uuid4().hex[:12]
        self._lock = asyncio.Lock()
        self._refs: list[Any] | None = None
        self._key = ""
        self._keys: list[str] = []  # every snapshot of this run, removed from the nodes at the end
        self._snap: dict[str, tuple[tuple[int, int, int], str]] = {}  # path -> (stat stamp, hash) as put

    def slots(self) -> int:
        """How many tasks to give Ray at once: the fleet is sized to this (SlotLimited)."""
        return self.cluster.slots()

    # -- the snapshot

    @staticmethod
    def _stamp(st: os.stat_result) -> tuple[int, int, int]:
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _take_snapshot(self) -> tuple[dict[str, tuple[bytes, int]], dict[str, tuple[tuple[int, int, int], str]]]:
        from pyagent.pipeline.workspace import project_files

        files: dict[str, tuple[bytes, int]] = {}
        seen: dict[str, tuple[tuple[int, int, int], str]] = {}
        for rel in project_files(self.root):
            path = self.root / rel
            try:
                st = path.stat()
                data = path.read_bytes()
            except OSError:
                continue  # vanished or unreadable: not part of the snapshot
            files[rel] = (data, st.st_mode & 0o777)
            seen[rel] = (self._stamp(st), content_hash(data))
        return files, seen

    def _delta(self) -> dict[str, bytes] | None:
        """Files changed or created since the snapshot (None when one was deleted: snapshot again)."""
        from pyagent.pipeline.workspace import project_files

        now = set(project_files(self.root))
        if set(self._snap) - now:
            return None
        out: dict[str, bytes] = {}
        for rel in sorted(now):
            path = self.root / rel
            try:
                st = path.stat()
                known = self._snap.get(rel)
                if known is not None and known[0] == self._stamp(st):
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if known is None or known[1] != content_hash(data):
                out[rel] = data
        return out

    async def _prepare(self) -> tuple[list[Any], dict[str, bytes]]:
        """The run's object refs (snapshot, settings) and the files to send beside them."""
        async with self._lock:
            delta = await asyncio.to_thread(self._delta) if self._refs is not None else None
            if self._refs is None or delta is None:
                files, self._snap = await asyncio.to_thread(self._take_snapshot)
                digest = content_hash(repr(sorted((k, v[1]) for k, v in self._snap.items())).encode())
                self._key = f"{digest[:24]}-{self._nonce}"
                self._keys.append(self._key)
                meta = {
                    "settings": self.settings.to_wire(),
                    "baseline": self.baseline.to_dict() if self.baseline is not None else None,
                    "impact": self.impact,
                }
                self._refs = [self.ray.put(files), self.ray.put(meta)]
                delta = {}
            return self._refs, delta

    # -- running one thing on Ray

    async def run_remote(self, fn: Any, *args: Any, timeout: float | None = None) -> Any:
        """``fn.remote(*args)``'s value, with our preemption, one re-run after a worker death, the
        timeout (``RayTaskTimeout``) and cancellation mapped to ``ray.cancel``."""
        errors = self.ray.exceptions
        died = _worker_died(self.ray)
        deaths = 0
        while True:
            ref = fn.remote(*args)
            self.stats.submitted += 1
            attempt = _Attempt(self.ray, ref)
            watch = enlist(attempt)  # frozen at once if the fleet froze this task meanwhile
            try:
                return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
            except TimeoutError:
                self.ray.cancel(ref, force=True)
                self.stats.timed_out += 1
                raise RayTaskTimeout(f"ran longer than {timeout:.0f}s on Ray; cancelled there") from None
            except asyncio.CancelledError:
                self.ray.cancel(ref, force=True)
                raise
            except (errors.TaskCancelledError, *died) as exc:
                if attempt.preempted:  # our fleet gave the slot to higher-priority work: wait for it back
                    self.stats.preempted += 1
                    await attempt.resumed.wait()  # still registered, so the fleet's thaw reaches it
                    continue
                if isinstance(exc, errors.TaskCancelledError):
                    raise
                deaths += 1
                if deaths > 1:
                    raise RayTaskLost(f"its worker died twice ({type(exc).__name__}); not run again") from None
                self.stats.reruns += 1
                log.warning("ray worker died mid-task (%s); submitting the task again", type(exc).__name__)
            finally:
                if watch is not None:
                    watch.running.discard(attempt)

    # -- Executor protocol

    def _timeout(self, task: AgentTask) -> float:
        left = task.context.budget.remaining().get("wall_seconds")
        return self.task_timeout if left is None else max(0.001, min(self.task_timeout, float(left)))

    async def execute(self, task: AgentTask, files: dict[str, bytes]) -> ChangeSet:
        if task.agent not in self._offline:
            if self.local is None:
                return _failed(task, f"agent {task.agent} needs this machine's LLM and no local executor was given", files)
            self.stats.local += 1
            return await self.local.execute(task, files)
        task.context.check()  # a spent budget or an open circuit stops the chain before Ray is asked
        refs, delta = await self._prepare()
        overlay = {**delta, **files}
        try:
            wire, node = await self.run_remote(
                self._remote, refs, self._key, task.to_wire(), overlay, timeout=self._timeout(task)
            )
        except (RayTaskTimeout, RayTaskLost) as exc:
            self.stats.failures.append(f"{task.id}: {exc}")
            return _failed(task, f"ray: {exc}", files)
        except self.ray.exceptions.RayError as exc:
            self.stats.failures.append(f"{task.id}: {type(exc).__name__}")
            cause = str(exc).strip().splitlines()
            return _failed(
                task, f"ray: the task failed on its worker (is pyagent installed on every node?): {cause[-1] if cause else exc}", files
            )
        change = ChangeSet.from_wire(wire)
        ran = change.verification.remote
        if change.task_id != task.id or ran is None or ran.lineage != task.context.lineage_ids():
            return _failed(task, f"ray: a worker answered task {task.id} with a change set of another task", files)
        self.stats.by_node[node] += 1
        if change.usage.tokens or change.usage.cost:  # one budget across workers
            task.context.budget.charge(tokens=change.usage.tokens, cost=change.usage.cost)
        return replace(change, verification=replace(change.verification, node=f"ray:{node[:12]}"))

    @property
    def summary(self) -> str:
        """One line for the run's report: where the tasks ran."""
        s = self.stats
        nodes = ", ".join(f"node {n[:8]} {c}" for n, c in sorted(s.by_node.items())) or "none"
        return (
            f"ray ({self.cluster.address}): {sum(s.by_node.values())} task(s) ran on the cluster ({nodes}), "
            f"{s.reruns} re-run after a worker died, {s.preempted} preempted for higher-priority work, "
            f"{s.timed_out} timed out, {s.local} ran locally (LLM agents)"
        )

    async def aclose(self) -> str:
        """Remove this run's snapshots from every live node, disconnect; returns the summary line."""
        if self._keys:
            try:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                forget = self.ray.remote(num_cpus=0, max_retries=0)(forget_snapshot)
                refs = [
                    forget.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(key)
                    for node in self.cluster.alive_nodes()
                    for key in self._keys
                ]
                await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(r.future()) for r in refs)), 30)
            except Exception as exc:  # best effort: a node's temp dir is its own to clean otherwise
                log.warning("could not remove the run's snapshot from every Ray node: %s", exc)
        summary = self.summary
        await asyncio.to_thread(self.cluster.close)
        return summary


def ray_executor_factory(cluster: RayCluster, *, task_timeout: float = 900.0) -> ExecutorFactory:
    """What ``pyagent improve --executor ray`` passes as ``ImproveOptions.executor_factory``."""

    def make(setup: ExecutorSetup) -> RayExecutor:
        return RayExecutor(
            setup.root,
            cluster=cluster,
            settings=setup.settings,
            baseline=setup.baseline,
            impact=setup.local.gate.impact,
            local=setup.local,
            task_timeout=task_timeout,
        )

    return make
