"""Fleet overhead: 10,000 no-op tasks through FleetManager vs. plain ``asyncio.gather``.

Target: the fleet within 3x of gather. Run: ``python benchmarks/fleet_overhead.py [--tasks N]``.
Each configuration is timed ``--repeat`` times and the best run is kept (least noise from
other processes on a shared machine).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
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


if __name__ == "__main__":
    main()
