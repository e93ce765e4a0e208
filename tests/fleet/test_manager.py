"""FleetManager/FleetExecutionCore: priority, preemption, aging, cancellation, timeouts, exactly-once."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from pyagent.fleet.core import (
    FINAL_STATES,
    FleetClosedError,
    FleetManager,
    TaskCancelledError,
    TaskControl,
    TaskHandle,
    TaskTimedOutError,
)
from pyagent.fleet.events import FleetEvent
from pyagent.model.budget import Budget
from pyagent.model.context import (
    BudgetExceeded,
    CascadeContext,
    CircuitOpen,
    DepthLimitExceeded,
    LoopDetected,
)
from pyagent.model.knowledge import InMemoryKnowledge
from pyagent.model.priority import AgentPriority as P

pytestmark = pytest.mark.timeout(60)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_critical_preempts_low_within_one_checkpoint_and_low_resumes() -> None:
    """One slot, a running Low task, a new Critical task: Critical starts at Low's next checkpoint."""
    log: list[str] = []

    async def main() -> None:
        low_started = asyncio.Event()

        async def low(c: TaskControl) -> str:
            for i in range(6):
                log.append(f"low{i}")
                low_started.set()
                await c.checkpoint()
            return "low done"

        async def critical(c: TaskControl) -> str:
            log.append("critical")
            return "critical done"

        events: list[FleetEvent] = []
        async with FleetManager(1, on_event=events.append) as fleet:
            h_low = fleet.submit("low", low, priority=P.LOW)
            await low_started.wait()
            log.append("submit critical")
            h_crit = fleet.submit("critical", critical, priority=P.CRITICAL)
            assert await h_crit.result() == "critical done"
            assert await h_low.result() == "low done"
        # Critical ran right after the one checkpoint Low was in when it arrived.
        i = log.index("submit critical")
        assert log[i + 1] == "critical", log
        assert log.count("critical") == 1
        assert [x for x in log if x.startswith("low")] == [f"low{i}" for i in range(6)]
        assert h_low.suspensions == 1 and h_low.starts == 1 and h_crit.starts == 1
        kinds = [(e.kind, e.agent) for e in events if e.kind in ("suspended", "resumed", "started")]
        assert kinds == [("started", "low"), ("suspended", "low"), ("started", "critical"), ("resumed", "low")]

    run(main())


def test_same_priority_never_preempts() -> None:
    async def main() -> None:
        async with FleetManager(1) as fleet:
            first_running = asyncio.Event()

            async def first(c: TaskControl) -> None:
                first_running.set()
                for _ in range(5):
                    await c.checkpoint()

            h1 = fleet.submit("a", first, priority=P.HIGH)
            await first_running.wait()

            async def noop(c: TaskControl) -> None:
                return None

            fleet.submit("b", noop, priority=P.HIGH)
        assert h1.suspensions == 0

    run(main())


def test_dispatch_order_by_priority_then_fifo() -> None:
    order: list[str] = []

    async def main() -> None:
        gate = asyncio.Event()

        async def blocker(c: TaskControl) -> None:
            await gate.wait()

        def rec(name: str) -> Any:
            async def fn(c: TaskControl) -> None:
                order.append(name)

            return fn

        async with FleetManager(1, aging_seconds=3600) as fleet:
            fleet.submit("blocker", blocker, priority=P.CRITICAL)
            for name, prio in [("l1", P.LOW), ("s1", P.STANDARD), ("c1", P.CRITICAL), ("h1", P.HIGH), ("s2", P.STANDARD), ("c2", P.CRITICAL)]:
                fleet.submit(name, rec(name), priority=prio)
            gate.set()
        assert order == ["c1", "c2", "h1", "s1", "s2", "l1"]

    run(main())


def test_aging_prevents_starvation() -> None:
    """A steady stream of High tasks cannot keep an old Low task waiting forever."""
    order: list[str] = []

    async def main() -> None:
        async def work(c: TaskControl) -> None:
            order.append(c.name)
            await asyncio.sleep(0.002)

        async with FleetManager(1, aging_seconds=0.01) as fleet:
            fleet.submit("low", work, priority=P.LOW)
            for _ in range(60):  # keep the queue full of fresh High tasks for ~120 ms
                fleet.submit("high", work, priority=P.HIGH)
                await asyncio.sleep(0.002)
        assert "low" in order and order.index("low") < len(order) - 1

    run(main())


def test_without_aging_low_would_wait_for_every_high() -> None:
    """Control for the aging test: with a huge aging period the Low task runs last."""
    order: list[str] = []

    async def main() -> None:
        async def work(c: TaskControl) -> None:
            order.append(c.name)
            await asyncio.sleep(0.002)

        async with FleetManager(1, aging_seconds=1e6) as fleet:
            fleet.submit("high", work, priority=P.HIGH)  # occupies the slot
            fleet.submit("low", work, priority=P.LOW)
            for _ in range(20):
                fleet.submit("high", work, priority=P.HIGH)
                await asyncio.sleep(0.002)
        assert order[-1] == "low"

    run(main())


def test_running_time_does_not_age_a_task() -> None:
    """Aging counts time waiting in the queue only: a Low task that has been *running* for 1 s is still
    outranked by a Standard task submitted then (with aging by submission time it would look 1 s old)."""
    events: list[str] = []

    async def main() -> None:
        async def low(c: TaskControl) -> None:
            events.append("low started")
            for _ in range(100):  # ~2 s of work with a checkpoint every 20 ms
                await asyncio.sleep(0.02)
                await c.checkpoint()
            events.append("low done")

        async def standard(c: TaskControl) -> None:
            events.append("standard ran")

        async with FleetManager(1, aging_seconds=0.25) as fleet:
            h_low = fleet.submit("low", low, priority=P.LOW)
            await asyncio.sleep(1.0)  # by submission time Low has "aged" 4 priority levels
            fleet.submit("standard", standard, priority=P.STANDARD)
            await h_low.result()
            assert h_low.suspensions == 1

    run(main())
    assert events == ["low started", "standard ran", "low done"]


def test_aging_carries_over_a_suspension() -> None:
    """A preempted task keeps the queue time it had: it is not younger than a task queued after it."""
    order: list[str] = []

    async def main() -> None:
        gate = asyncio.Event()

        async def blocker(c: TaskControl) -> None:
            await gate.wait()

        async def work(c: TaskControl) -> None:
            order.append(c.name)

        async with FleetManager(1, aging_seconds=0.5) as fleet:
            fleet.submit("blocker", blocker, priority=P.CRITICAL)
            fleet.submit("old low", work, priority=P.LOW)
            await asyncio.sleep(1.0)  # waited 1 s = 2 levels: effective priority 2 > a fresh Standard's 1
            fleet.submit("new standard", work, priority=P.STANDARD)
            gate.set()
        assert order == ["old low", "new standard"]

    run(main())


def test_cancellation_in_every_state() -> None:
    async def main() -> None:
        started = asyncio.Event()
        suspended_ready = asyncio.Event()

        async def forever(c: TaskControl) -> None:
            started.set()
            await asyncio.sleep(3600)

        async def low(c: TaskControl) -> None:
            suspended_ready.set()
            while True:
                await c.checkpoint()
                await asyncio.sleep(0.001)

        async def noop(c: TaskControl) -> int:
            return 1

        async with FleetManager(1) as fleet:
            h_low = fleet.submit("low", low, priority=P.LOW)
            await suspended_ready.wait()
            h_run = fleet.submit("running", forever, priority=P.HIGH)  # preempts low
            await started.wait()
            assert h_low.state == "suspended" and h_run.state == "running"
            h_queued = fleet.submit("queued", noop, priority=P.STANDARD)
            assert h_queued.state == "queued"
            assert h_queued.cancel() and h_run.cancel() and h_low.cancel()
            for h in (h_queued, h_run, h_low):
                with pytest.raises(TaskCancelledError):
                    await h.result()
                assert h.state == "cancelled"
                assert not h.cancel()  # already final
            assert fleet.active() == []
            assert fleet.stats()["cancelled"] == 3

    run(main())


def test_cancel_before_first_step_is_still_final() -> None:
    async def main() -> None:
        async def noop(c: TaskControl) -> None:
            return None

        async with FleetManager(2) as fleet:
            h = fleet.submit("x", noop)
            assert h.state == "running"  # slot free: started at once, coroutine not yet stepped
            h.cancel()
        assert h.state == "cancelled" and fleet.cycle == 1

    run(main())


def test_timeout_and_failure_and_result() -> None:
    async def main() -> None:
        async def slow(c: TaskControl) -> None:
            await asyncio.sleep(10)

        async def boom(c: TaskControl) -> None:
            raise RuntimeError("kaput")

        async def own_timeout(c: TaskControl) -> None:
            raise TimeoutError("the HTTP call timed out")

        async def ok(c: TaskControl) -> int:
            return 7

        async with FleetManager(4) as fleet:
            hs = fleet.submit("slow", slow, timeout=0.05)
            hb = fleet.submit("boom", boom)
            ho = fleet.submit("own", own_timeout, timeout=5)
            hk = fleet.submit("ok", ok)
            with pytest.raises(TaskTimedOutError, match=r"timed out after 0\.05s"):
                await hs.result()
            with pytest.raises(RuntimeError, match="kaput"):
                await hb.result()
            with pytest.raises(TimeoutError, match="HTTP call"):
                await ho.result()
            assert await hk.result() == 7
        assert (hs.state, hb.state, ho.state, hk.state) == ("timed_out", "failed", "failed", "done")

    run(main())


def test_suspended_time_does_not_count_against_timeout() -> None:
    async def main() -> None:
        ready = asyncio.Event()

        async def low(c: TaskControl) -> str:
            ready.set()
            for _ in range(3):
                await c.checkpoint()
                await asyncio.sleep(0.01)
            return "ok"

        async def critical(c: TaskControl) -> None:
            await asyncio.sleep(0.3)  # longer than low's whole timeout

        async with FleetManager(1) as fleet:
            h_low = fleet.submit("low", low, priority=P.LOW, timeout=0.25)
            await ready.wait()
            fleet.submit("critical", critical, priority=P.CRITICAL)
            assert await h_low.result() == "ok"
        assert h_low.suspensions == 1

    run(main())


def test_thousand_tasks_exactly_once() -> None:
    """1,000 tasks of mixed priority with random failures, timeouts, cancellations and preemption:
    every task ends exactly once in a final state; none lost, none run twice."""
    rng = random.Random(20261125)
    runs: Counter[int] = Counter()
    finished: Counter[str] = Counter()
    expected: dict[int, str] = {}

    async def main() -> None:
        def make(i: int, fate: str) -> Any:
            async def fn(c: TaskControl) -> int:
                runs[i] += 1
                for _ in range(rng.randint(0, 3)):
                    await c.checkpoint()
                    await asyncio.sleep(0)
                if fate == "fail":
                    raise ValueError(f"task {i} failed")
                if fate == "timeout":
                    await asyncio.sleep(5)
                return i

            return fn

        def on_event(e: FleetEvent) -> None:
            if e.kind == "finished":
                finished[e.task_id] += 1

        knowledge = InMemoryKnowledge()
        handles: list[TaskHandle[int]] = []
        async with FleetManager(8, aging_seconds=0.05, on_event=on_event, knowledge=knowledge) as fleet:
            for i in range(1000):
                fate = rng.choices(["ok", "fail", "timeout", "cancel"], weights=[80, 10, 5, 5])[0]
                expected[i] = {"ok": "done", "fail": "failed", "timeout": "timed_out", "cancel": "cancelled"}[fate]
                h = fleet.submit(f"t{i}", make(i, fate), priority=P(rng.randrange(4)), timeout=0.02 if fate == "timeout" else None)
                handles.append(h)
                if fate == "cancel":
                    if rng.random() < 0.5:
                        h.cancel()
                    else:
                        asyncio.get_running_loop().call_later(rng.random() * 0.01, h.cancel)
                if i % 50 == 0:
                    await asyncio.sleep(0)
            await fleet.join()
            assert fleet.active() == []
        for i, h in enumerate(handles):
            assert h.state in FINAL_STATES
            assert runs[i] <= 1 and h.starts <= 1, f"task {i} ran {runs[i]} times"
            if expected[i] == "cancelled":
                # a delayed cancel may arrive after a fast task already finished
                assert h.state in ("cancelled", "done")
            else:
                assert h.state == expected[i], (i, h.state, h.error)
            if h.state == "done":
                assert runs[i] == 1 and await h.result() == i
        assert len(finished) == 1000 and set(finished.values()) == {1}
        assert fleet.cycle == 1000 and knowledge.cycles == 1000
        stats = fleet.stats()
        assert stats["done"] + stats["failed"] + stats["cancelled"] + stats["timed_out"] == 1000

    run(main())


def test_registry_and_stats() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def wait(c: TaskControl) -> None:
            await gate.wait()

        async with FleetManager(2) as fleet:
            hs = [fleet.submit(f"w{i}", wait, kind="lint") for i in range(5)]
            await asyncio.sleep(0)
            states = Counter(t.state for t in fleet.active())
            assert states == {"running": 2, "queued": 3}
            assert {t.id for t in fleet.active()} == {h.id for h in hs}
            assert fleet.get(hs[0].id) is hs[0]
            assert all(t.kind == "lint" for t in fleet.active())
            gate.set()
        assert fleet.active() == [] and fleet.get(hs[0].id) is None
        assert fleet.stats()["done"] == 5

    run(main())


def test_children_through_spawn_share_lineage_and_budget() -> None:
    async def main() -> None:
        budget = Budget(tokens=100)
        root = CascadeContext.root("planner", action="plan", budget=budget)

        async def child(c: TaskControl) -> tuple[str, ...]:
            c.context.budget.charge(tokens=10)
            return c.context.lineage_ids()

        async def parent(c: TaskControl) -> list[tuple[str, ...]]:
            handles = [c.spawn("coder", f"fix {i}", child) for i in range(3)]
            return [await c.wait(h) for h in handles]

        async with FleetManager(1) as fleet:  # one slot: waiting parents must give it up
            lineages = await fleet.submit("planner", parent, context=root).result()
        assert all(lin[0] == root.task_id and len(lin) == 2 for lin in lineages)
        assert budget.used()["tokens"] == 30

    run(main())


def test_chain_limits_stop_tasks_with_reason() -> None:
    async def main() -> None:
        async def recurse(c: TaskControl) -> None:
            await c.wait(c.spawn(c.name, "again", recurse))

        async def deepen(c: TaskControl) -> None:
            await c.wait(c.spawn("agent", f"depth {c.context.depth}", deepen))

        async def spend(c: TaskControl) -> None:
            c.context.budget.charge(tokens=60)
            await c.checkpoint()
            await c.wait(c.spawn("child", "spend more", spend))

        async with FleetManager(2) as fleet:
            with pytest.raises(LoopDetected, match="loop detected"):
                await fleet.submit("looper", recurse).result()
            with pytest.raises(DepthLimitExceeded, match="depth limit 3"):
                await fleet.submit("deep", deepen, context=CascadeContext.root("deep", max_depth=3)).result()
            ctx = CascadeContext.root("spender", budget=Budget(tokens=100))
            with pytest.raises(BudgetExceeded, match="token budget exhausted: used 120 of 100"):
                await fleet.submit("spender", spend, context=ctx).result()

    run(main())


def test_bad_submissions_are_rejected_and_lose_nothing() -> None:
    async def main() -> None:
        async def ok(c: TaskControl) -> int:
            return 1

        async with FleetManager(2) as fleet:
            good = fleet.submit("good", ok)
            with pytest.raises(ValueError, match="timeout must be"):
                fleet.submit("x", ok, timeout=-1)
            with pytest.raises(ValueError, match="unknown priority"):
                fleet.submit("x", ok, priority="urgent")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="name"):
                fleet.submit("", ok)
            with pytest.raises(TypeError, match="callable"):
                fleet.submit("x", 42)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="CascadeContext"):
                fleet.submit("x", ok, context={"task_id": "t"})  # type: ignore[arg-type]
            ctx = CascadeContext.root("dup")
            gate = asyncio.Event()

            async def hold(c: TaskControl) -> None:
                await gate.wait()

            fleet.submit("dup", hold, context=ctx)
            with pytest.raises(ValueError, match="already active"):
                fleet.submit("dup", ok, context=ctx)
            gate.set()
            assert await good.result() == 1
        assert fleet.cycle == 2
        with pytest.raises(FleetClosedError):
            fleet.submit("late", ok)

    run(main())


@pytest.mark.parametrize(("kwargs", "match"), [({"concurrency": 0}, "concurrency"), ({"concurrency": 2, "aging_seconds": 0}, "aging_seconds")])
def test_bad_fleet_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FleetManager(**kwargs)


def test_submit_outside_event_loop_is_a_clear_error() -> None:
    fleet = FleetManager(1)

    async def ok(c: TaskControl) -> None:
        return None

    with pytest.raises(RuntimeError, match="needs a running event loop"):
        fleet.submit("x", ok)


def test_exception_in_block_cancels_remaining_tasks() -> None:
    async def main() -> list[TaskHandle[None]]:
        async def forever(c: TaskControl) -> None:
            await asyncio.sleep(3600)

        handles: list[TaskHandle[None]] = []
        with pytest.raises(KeyError):
            async with FleetManager(1) as fleet:
                handles += [fleet.submit("a", forever), fleet.submit("b", forever)]
                await asyncio.sleep(0)
                raise KeyError("stop")
        return handles

    handles = run(main())
    assert [h.state for h in handles] == ["cancelled", "cancelled"]


def test_broken_event_listener_does_not_break_the_fleet() -> None:
    async def main() -> None:
        def bad(e: FleetEvent) -> None:
            raise RuntimeError("display crashed")

        async def ok(c: TaskControl) -> int:
            return 3

        async with FleetManager(1, on_event=bad) as fleet:
            assert await fleet.run("x", ok) == 3

    run(main())


def test_cancelling_a_parent_cancels_its_subtree_but_success_leaves_children_alone() -> None:
    async def main() -> None:
        spawned: list[TaskHandle[None]] = []
        ready = asyncio.Event()

        async def sleeper(c: TaskControl) -> None:
            await asyncio.sleep(3600)

        async def grandparent(c: TaskControl) -> None:
            async def parent(pc: TaskControl) -> None:
                spawned.append(pc.spawn("leaf", "sleep", sleeper))
                ready.set()
                await asyncio.sleep(3600)

            spawned.append(c.spawn("parent", "spawn", parent))
            await c.wait(spawned[0])

        async def fire_and_forget(c: TaskControl) -> TaskHandle[int]:
            async def quick(cc: TaskControl) -> int:
                await asyncio.sleep(0.01)
                return 5

            return c.spawn("quick", "compute", quick)

        async with FleetManager(4) as fleet:
            root = fleet.submit("root", grandparent)
            await ready.wait()
            root.cancel()
            with pytest.raises(TaskCancelledError):
                await root.result()
            await fleet.join()
            assert [h.state for h in spawned] == ["cancelled", "cancelled"]
            child = await fleet.submit("ok", fire_and_forget).result()
            assert await child.result() == 5  # a parent that succeeded does not cancel its children

    run(main())


def test_submit_from_another_thread() -> None:
    async def main() -> list[int]:
        async def square(c: TaskControl) -> int:
            await asyncio.sleep(0)
            return int(c.name) ** 2

        async with FleetManager(3) as fleet:

            def producer() -> list[TaskHandle[int]]:
                futures = [fleet.submit_threadsafe(str(i), square) for i in range(20)]
                bad = fleet.submit_threadsafe("x", square, timeout=-1)
                with pytest.raises(ValueError, match="timeout"):
                    bad.result(timeout=5)
                return [f.result(timeout=5) for f in futures]

            handles = await asyncio.to_thread(producer)
            return [await h.result() for h in handles]

    assert run(main()) == [i * i for i in range(20)]
    with pytest.raises(RuntimeError, match="not running on an event loop"):
        FleetManager(1).submit_threadsafe("x", lambda c: asyncio.sleep(0))


def test_one_manager_across_two_event_loops() -> None:
    fleet = FleetManager(2)

    async def ok(c: TaskControl) -> str:
        return c.name

    async def main(name: str) -> str:
        return await fleet.run(name, ok)

    assert run(main("first")) == "first"
    assert run(main("second")) == "second"
    assert fleet.cycle == 2


def test_tasks_of_a_stopped_chain_stop_at_their_first_checkpoint() -> None:
    ran: list[str] = []

    async def main() -> None:
        async def work(c: TaskControl) -> None:
            await c.checkpoint()
            ran.append(c.name)

        spent = CascadeContext.root("a", budget=Budget(tokens=1))
        with pytest.raises(BudgetExceeded):
            spent.budget.charge(tokens=2)
        broken = CascadeContext.root("b")
        for _ in range(3):
            broken = broken.record_failure("apply", "patch did not apply")
        healthy = CascadeContext.root("c")
        async with FleetManager(2) as fleet:
            with pytest.raises(BudgetExceeded, match="token budget exhausted"):
                await fleet.submit("a", work, context=spent).result()
            with pytest.raises(CircuitOpen, match="failed 3 times"):
                await fleet.submit("b", work, context=broken).result()
            await fleet.submit("c", work, context=healthy).result()

    run(main())
    assert ran == ["c"]
