"""Scheduler properties under random workloads (Hypothesis): order, slot limit, exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyagent.fleet.core import FleetManager, TaskControl
from pyagent.model.priority import AgentPriority as P

pytestmark = pytest.mark.timeout(120)

priorities = st.sampled_from(list(P))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(priorities, min_size=1, max_size=30))
def test_waiting_tasks_start_by_priority_then_submission(prios: list[P]) -> None:
    started: list[int] = []

    async def main() -> None:
        gate = asyncio.Event()

        async def blocker(c: TaskControl) -> None:
            await gate.wait()

        def task(i: int) -> Any:
            async def fn(c: TaskControl) -> None:
                started.append(i)

            return fn

        async with FleetManager(1, aging_seconds=1e9) as fleet:
            fleet.submit("blocker", blocker, priority=P.CRITICAL)
            for i, p in enumerate(prios):
                fleet.submit(f"t{i}", task(i), priority=p)
            gate.set()

    asyncio.run(main())
    assert started == sorted(range(len(prios)), key=lambda i: (-prios[i], i))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 4),
    st.lists(st.tuples(priorities, st.integers(0, 4), st.integers(0, 3)), min_size=1, max_size=40),
)
def test_slots_never_oversubscribed_and_every_task_runs_once(concurrency: int, tasks: list[tuple[P, int, int]]) -> None:
    """Random priorities, checkpoint counts and arrival gaps: at most ``concurrency`` tasks are ever
    between checkpoints at once, each body runs once, and all finish."""
    running = 0
    peak = 0
    runs = [0] * len(tasks)

    async def main() -> None:
        nonlocal running, peak

        def make(i: int, checkpoints: int) -> Any:
            async def fn(c: TaskControl) -> int:
                nonlocal running, peak
                runs[i] += 1
                for _ in range(checkpoints + 1):
                    running += 1
                    peak = max(peak, running)
                    await asyncio.sleep(0)  # work, holding the slot
                    running -= 1
                    await c.checkpoint()  # may suspend here
                return i

            return fn

        async with FleetManager(concurrency, aging_seconds=0.05) as fleet:
            handles = []
            for i, (prio, checkpoints, gap) in enumerate(tasks):
                handles.append(fleet.submit(f"t{i}", make(i, checkpoints), priority=prio))
                for _ in range(gap):
                    await asyncio.sleep(0)
            results = [await h.result() for h in handles]
        assert results == list(range(len(tasks)))
        assert fleet.cycle == len(tasks)

    asyncio.run(main())
    assert peak <= concurrency
    assert runs == [1] * len(tasks)


def test_the_lowest_priority_running_task_is_the_one_preempted() -> None:
    async def main() -> None:
        ready = asyncio.Event()
        count = 0

        async def worker(c: TaskControl) -> None:
            nonlocal count
            count += 1
            if count == 2:
                ready.set()
            for _ in range(20):
                await c.checkpoint()
                await asyncio.sleep(0.001)

        async def urgent(c: TaskControl) -> None:
            return None

        async with FleetManager(2) as fleet:
            standard = fleet.submit("standard", worker, priority=P.STANDARD)
            low = fleet.submit("low", worker, priority=P.LOW)
            await ready.wait()
            await fleet.submit("urgent", urgent, priority=P.CRITICAL).result()
        assert (low.suspensions, standard.suspensions) == (1, 0)

    asyncio.run(main())


def test_task_that_never_checkpoints_is_not_preempted_but_finishes() -> None:
    """Preemption is cooperative: without checkpoints the urgent task simply waits its turn."""
    order: list[str] = []

    async def main() -> None:
        ready = asyncio.Event()

        async def stubborn(c: TaskControl) -> None:
            ready.set()
            for _ in range(5):
                await asyncio.sleep(0.001)
            order.append("stubborn")

        async def urgent(c: TaskControl) -> None:
            order.append("urgent")

        async with FleetManager(1) as fleet:
            h = fleet.submit("stubborn", stubborn, priority=P.LOW)
            await ready.wait()
            fleet.submit("urgent", urgent, priority=P.CRITICAL)
        assert h.suspensions == 0

    asyncio.run(main())
    assert order == ["stubborn", "urgent"]
