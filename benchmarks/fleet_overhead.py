"""Fleet overhead: 10,000 no-op tasks through FleetManager vs. plain ``asyncio.gather``.

Target: the fleet within 3x of gather. Run: ``python benchmarks/fleet_overhead.py [--tasks N]``.
Each configuration is timed ``--repeat`` times and the best run is kept (least noise from
other processes on a shared machine).

The Ray row (``--ray-tasks``, 1,000 by default; needs ``pip install 'pyagent[ray]'``; run this file as a
script, so Ray ships its no-op function by value) starts a local Ray instance with ``--ray-cpus`` CPUs
and times no-op tasks three ways in the same run: the local fleet (FleetManager, slots = the CPUs),
the Ray executor's path (the same fleet in front, each task one Ray task via ``RayExecutor.run_remote``,
only as many in flight as there are slots), and plain Ray (every task submitted at once, Ray's own queue,
no priorities). It prints the per-task overhead of each and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

from pyagent.fleet.core import FleetManager, TaskControl
from pyagent.fleet.events import FleetEvent
from pyagent.model.priority import AgentPriority


async def _noop() -> None:
    return None


async def _noop_task(control: TaskControl) -> None:
    return None


async def gather_run(n: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*[_noop() for _ in range(n)])
    return time.perf_counter() - start


async def fleet_run(n: int, concurrency: int, *, mixed: bool, events: bool) -> float:
    sink: list[FleetEvent] = []
    prios = list(AgentPriority)
    start = time.perf_counter()
    async with FleetManager(concurrency, on_event=sink.append if events else None) as fleet:
        submit = fleet.submit
        if mixed:
            for i in range(n):
                submit("noop", _noop_task, priority=prios[i & 3])
        else:
            for _ in range(n):
                submit("noop", _noop_task)
    elapsed = time.perf_counter() - start
    assert fleet.cycle == n and fleet.stats()["done"] == n
    return elapsed


def timed(fn: Callable[[], Coroutine[Any, Any, float]]) -> float:
    gc.collect()
    return asyncio.run(fn())


def _ray_noop() -> None:
    return None


async def ray_fleet_run(n: int, slots: int, executor: Any, remote: Any) -> float:
    async def task(control: TaskControl) -> None:
        await executor.run_remote(remote)

    start = time.perf_counter()
    async with FleetManager(slots) as fleet:
        for _ in range(n):
            fleet.submit("noop", task)
    elapsed = time.perf_counter() - start
    assert fleet.stats()["done"] == n
    return elapsed


async def ray_plain_run(n: int, ray: Any, remote: Any) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(asyncio.wrap_future(remote.remote().future()) for _ in range(n)))
    return time.perf_counter() - start


def ray_rows(n: int, cpus: int, repeat: int) -> None:
    try:
        import ray
    except ImportError:
        print("ray row: not measured, Ray is not installed (pip install 'pyagent[ray]')")
        return
    from pyagent.pipeline.ray_executor import RayCluster, RayExecutor
    from pyagent.pipeline.settings import PipelineSettings

    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        executor = RayExecutor(".", cluster=RayCluster.connect(), settings=PipelineSettings())
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_noop)
        slots = executor.slots()
        ray.get([remote.remote() for _ in range(4 * slots)])  # workers started before timing
        print(f"ray: local instance with {cpus} CPUs up in {time.perf_counter() - t0:.1f}s; {slots} slots")
        local: list[float] = []
        ours: list[float] = []
        plain: list[float] = []
        for _ in range(repeat):
            local.append(timed(lambda: fleet_run(n, slots, mixed=False, events=False)))
            ours.append(timed(lambda: ray_fleet_run(n, slots, executor, remote)))
            plain.append(timed(lambda: ray_plain_run(n, ray, remote)))
    finally:
        ray.shutdown()
    per = {name: min(v) / n * 1e6 for name, v in (("local", local), ("ours", ours), ("plain", plain))}
    print(
        f"{'ray executor (fleet->ray)':24} {n} no-op tasks: {per['ours']:8.1f} us/task  local fleet "
        f"{per['local']:6.2f} us/task  ratio {per['ours'] / per['local']:7.0f}x; plain ray (all submitted "
        f"at once, no priorities) {per['plain']:7.1f} us/task, ours/plain {per['ours'] / per['plain']:4.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--ray-tasks", type=int, default=1_000, help="no-op tasks of the Ray row (0: no Ray row)")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--ray-repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.tasks
    configs = [
        ("fleet concurrency=4", 4, False, False),
        ("fleet concurrency=64", 64, False, False),
        ("fleet concurrency=n", n, False, False),
        ("fleet c=64 mixed prio", 64, True, False),
        ("fleet c=64 + events", 64, False, True),
    ]
    print(f"{n} no-op tasks, {args.repeat} paired runs each (anchor and fleet alternate; the machine is shared)")
    for label, conc, mixed, events in configs:
        anchor: list[float] = []
        ours: list[float] = []
        for _ in range(args.repeat):
            anchor.append(timed(lambda: gather_run(n)))
            ours.append(timed(lambda c=conc, m=mixed, e=events: fleet_run(n, c, mixed=m, events=e)))  # type: ignore[misc]
        ratios = sorted(o / a for o, a in zip(ours, anchor, strict=True))
        print(
            f"{label:24} gather {min(anchor) * 1e3:6.1f} ms  fleet {min(ours) * 1e3:6.1f} ms  "
            f"ratio best/best {min(ours) / min(anchor):4.2f}x  median paired {statistics.median(ratios):4.2f}x  (target <= 3x)"
        )
    if args.ray_tasks > 0:
        ray_rows(args.ray_tasks, args.ray_cpus, args.ray_repeat)


if __name__ == "__main__":
    main()
