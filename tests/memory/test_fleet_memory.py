"""StoreKnowledge as the fleet's KnowledgeBackend: real FleetManager, real agents, real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from pyagent.agents.base import BaseAgent
from pyagent.agents.worker import AgentOutcome
from pyagent.fleet.core import FleetManager, TaskControl
from pyagent.memory import KnowledgeStore, NeuralPruningEngine, SnapshotPolicy
from pyagent.memory.fleet_memory import FAILURES, StoreKnowledge, default_store_path
from pyagent.memory.snapshot import list_snapshots
from pyagent.model.context import CascadeContext
from pyagent.model.knowledge import ChangeOutcome, KnowledgeBackend
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask


def _outcome(status: str, *, h: str = "h1", agent: str = "ruff-fixer", reason: str | None = None) -> ChangeOutcome:
    return ChangeOutcome(agent=agent, action="fix:E711", task_kind="lint", target="pkg/a.py",
                         target_hash=h, status=status, reason=reason, lineage=("root-1", "task-2"))  # type: ignore[arg-type]


def test_implements_the_protocol_and_remembers_failures(tmp_path: Path) -> None:
    knowledge = StoreKnowledge.open(tmp_path, snapshot_every=None)
    assert isinstance(knowledge, KnowledgeBackend)
    knowledge.record_outcome(_outcome("rolled_back", reason="tests failed: test_a"))
    assert knowledge.known_failure(agent="ruff-fixer", action="fix:E711", target="pkg/a.py",
                                   target_hash="h1") == "tests failed: test_a"
    assert knowledge.known_failure(agent="ruff-fixer", action="fix:E711", target="pkg/a.py", target_hash="h2") is None
    assert knowledge.known_failure(agent="other", action="fix:E711", target="pkg/a.py", target_hash="h1") is None
    assert knowledge.route_weight("ruff-fixer", "lint") == 0.5
    fact = knowledge.failures("pkg/a.py")[0]
    assert fact.provenance == ("root-1", "task-2") and fact.value["count"] == 1
    knowledge.record_outcome(_outcome("failed", reason="does not parse"))
    assert knowledge.failures()[0].value["count"] == 2
    assert knowledge.store.search("tests failing in test_a", k=1)[0].namespace == FAILURES
    knowledge.close()
    # persistent: a new process (here: a new handle) knows it
    again = StoreKnowledge.open(tmp_path, snapshot_every=None)
    assert again.known_failure(agent="ruff-fixer", action="fix:E711", target="pkg/a.py",
                               target_hash="h1") == "does not parse"
    again.record_outcome(_outcome("kept"))  # the same change now works on that content: forget the failure
    assert again.known_failure(agent="ruff-fixer", action="fix:E711", target="pkg/a.py", target_hash="h1") is None
    again.record_outcome(_outcome("skipped"))
    assert again.store.edge("agent:ruff-fixer", "kept", "file:pkg/a.py") is not None
    again.close()
    assert default_store_path(tmp_path).is_file()


def test_consulting_a_failure_keeps_it_alive(tmp_path: Path) -> None:
    with KnowledgeStore(tmp_path / "m.db") as store:
        knowledge = StoreKnowledge(store, NeuralPruningEngine(store))
        knowledge.record_outcome(_outcome("failed", h="used", reason="x"))
        knowledge.record_outcome(_outcome("failed", h="idle", reason="y"))
        for cycle in range(1, 151):
            if cycle % 40 == 0:
                assert knowledge.known_failure(agent="ruff-fixer", action="fix:E711", target="pkg/a.py",
                                               target_hash="used") == "x"
            knowledge.tick()
        assert store.cycle == 150
        assert [f.value["target_hash"] for f in knowledge.failures()] == ["used"]  # idle one pruned


class Fixer(BaseAgent):
    name = "fixer"

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        return AgentOutcome(note=f"fixed {task.target}")


def _task(target: str, target_hash: str, context: CascadeContext | None = None) -> AgentTask:
    return AgentTask(id=f"t-{target}", agent="fixer", kind="lint", target=target, files=(target,),
                     priority=AgentPriority.STANDARD, context=context or CascadeContext.root("planner"),
                     params={"action": "fix", "target_hash": target_hash})


def test_fleet_ticks_once_per_task_and_agents_learn(tmp_path: Path) -> None:
    async def main() -> list[str]:
        store = KnowledgeStore(tmp_path / "m.db")
        knowledge = StoreKnowledge(store, snapshots=SnapshotPolicy(tmp_path / "snaps", every=4, keep=2))
        agent = Fixer(knowledge=knowledge)

        def job(target: str, h: str, ok: bool) -> Callable[[TaskControl], Awaitable[str]]:
            async def run(control: TaskControl) -> str:
                task = _task(target, h, control.context)
                if knowledge.known_failure(agent="fixer", action="fix", target=target, target_hash=h) is not None:
                    return "skipped"  # what the planner asks before it plans a task
                await control.checkpoint()
                agent.record_outcome(task, "kept" if ok else "rolled_back", None if ok else "tests failed")
                return "kept" if ok else "rolled_back"

            return run

        results = []
        async with FleetManager(2, knowledge=knowledge) as fleet:
            first = [fleet.submit("fixer", job(f"f{i}.py", f"h{i}", i % 2 == 0)) for i in range(6)]
            results += [await h.result() for h in first]
            second = [fleet.submit("fixer", job(f"f{i}.py", f"h{i}", True)) for i in range(6)]
            results += [await h.result() for h in second]
        assert store.cycle == 12
        assert [p.name for p in list_snapshots(tmp_path / "snaps")] == ["snap-000000000008", "snap-000000000012"]
        store.close()
        return results

    results = asyncio.run(main())
    assert results[:6] == ["kept", "rolled_back"] * 3
    assert results[6:] == ["kept", "skipped"] * 3  # known failures on unchanged content are skipped


def test_tick_failure_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    with KnowledgeStore(tmp_path / "m.db") as store:
        knowledge = StoreKnowledge(store, snapshots=SnapshotPolicy(tmp_path / "not-a-dir" / "s", every=1))
        knowledge.tick()
        assert knowledge.last_error is not None and "not-a-dir" in knowledge.last_error
        assert store.cycle == 1


def test_lineage_comes_from_the_cascade_context(tmp_path: Path) -> None:
    with KnowledgeStore(tmp_path / "m.db") as store:
        knowledge = StoreKnowledge(store)
        agent = Fixer(knowledge=knowledge)
        ctx = CascadeContext.root("planner").next_level("fixer", "fix")
        agent.record_outcome(_task("a.py", "h", ctx), "failed", "boom")
        assert knowledge.failures()[0].provenance == ctx.lineage_ids()
