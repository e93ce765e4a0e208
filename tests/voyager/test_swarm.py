"""SwarmExecutor routing over real in-process nodes (real mDNS, real CurveZMQ on 127.0.0.1).

To keep these fast, each node's task runner is a function that answers with a change set built
from the payload instead of starting the worker process that runs the agents and the gate; the
real worker is exercised end to end in ``tests/integration/test_voyager_swarm.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyagent.model.budget import Budget
from pyagent.model.context import CascadeContext
from pyagent.model.errors import BudgetExceeded
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask, ChangeSet, content_hash
from pyagent.model.verification import RemoteRun, Usage, Verdict, Verification
from pyagent.voyager.home import NodeHome
from pyagent.voyager.node import NodeConfig, VoyagerNode
from pyagent.voyager.swarm import SwarmExecutor
from pyagent.voyager.transport import RemoteError
from tests.voyager.conftest import run


def make_task(task_id: str, budget: Budget | None = None) -> AgentTask:
    ctx = CascadeContext.root("improve", action=f"test:{task_id}", budget=budget or Budget())
    ctx = ctx.next_level("lint", f"lint:{task_id}")
    return AgentTask(
        id=task_id,
        agent="lint",
        kind="lint",
        target="pkg/mod.py",
        files=("pkg/mod.py",),
        priority=AgentPriority.STANDARD,
        context=ctx,
        params={"action": "lint:F401"},
    )


class Answer:
    """A node task runner: upper-cases the target and reports what it was given."""

    def __init__(self, node: str, *, tokens: int = 0, hold: asyncio.Event | None = None) -> None:
        self.node = node
        self.tokens = tokens
        self.hold = hold
        self.payloads: list[dict[str, Any]] = []
        self.started = asyncio.Event()

    async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.payloads.append(payload)
        self.started.set()
        if self.hold is not None:
            await self.hold.wait()
        task = AgentTask.from_wire(payload["task"])
        new = {p: data.upper() for p, data in payload["files"].items()}
        cs = ChangeSet(
            task_id=task.id,
            changes=dict(new),
            base_hashes=payload["base_hashes"],
            verification=Verification(
                Verdict.VERIFIED,
                remote=RemoteRun(
                    os.getpid(), task.context.root_task_id, tuple(e.task_id for e in task.context.lineage)
                ),
            ),
            reason="ok",
            usage=Usage(tokens=self.tokens),
        )
        return cs.to_wire()


class LocalRecorder:
    def __init__(self) -> None:
        self.ran: list[str] = []

    async def execute(self, task: AgentTask, files: dict[str, bytes]) -> ChangeSet:
        self.ran.append(task.id)
        return ChangeSet(task.id, {}, {p: content_hash(b) for p, b in files.items()}, Verification(Verdict.REJECTED), "local")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_bytes(b"x = 1\n")
    (root / "pkg" / "other.py").write_bytes(b"y = 2\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_mod.py").write_bytes(b"def test(): pass\n")
    return root


def trust_both(origin: NodeHome, node: NodeHome) -> None:
    origin.trust(node.keypair().public.decode())
    node.trust(origin.keypair().public.decode())


async def start_node(home: Path, name: str, runner: Any, slots: int = 1) -> VoyagerNode:
    node = VoyagerNode(NodeConfig(name=name, home=str(home), slots=slots), runner=runner)
    await node.start()
    return node


def test_task_runs_on_a_trusted_peer_with_lineage_budget_and_files(project: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        origin = NodeHome(tmp_path / "origin")
        trust_both(origin, NodeHome(tmp_path / "n1"))
        answer = Answer("n1", tokens=7)
        node = await start_node(tmp_path / "n1", "n1-swarm", answer)
        budget = Budget(tokens=100)
        local = LocalRecorder()
        swarm = SwarmExecutor(project, local=local, home=origin, baseline={"passed": 1}, discovery_wait=15)
        try:
            await swarm.start()
            task = make_task("t1", budget)
            files = {"pkg/mod.py": b"x = 1\n"}
            cs = await swarm.execute(task, files)
            assert cs.changes == {"pkg/mod.py": b"X = 1\n"}
            assert cs.base_hashes == {"pkg/mod.py": content_hash(b"x = 1\n")}
            assert cs.verification.node == "n1-swarm"
            assert cs.verification.remote is not None
            assert list(cs.verification.remote.lineage) == [e.task_id for e in task.context.lineage]
            assert budget.used()["tokens"] == 7  # the peer's usage is charged to the one budget
            assert local.ran == []
            sent = answer.payloads[0]
            assert set(sent["manifest"]) == {"pkg/mod.py", "pkg/other.py", "tests/test_mod.py"}
            assert sent["task"]["params"]["baseline"] == {"passed": 1}
            assert swarm.stats.blobs_sent == 3
            # a second task only ships what changed
            (project / "pkg" / "other.py").write_bytes(b"y = 3\n")
            await swarm.execute(make_task("t2", budget), files)
            assert swarm.stats.blobs_sent == 4
            assert budget.used()["tokens"] == 14
        finally:
            await swarm.aclose()
            await node.close()

    run(scenario(), timeout=60)


def test_untrusted_or_full_peers_are_not_used(project: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        origin = NodeHome(tmp_path / "origin")
        stranger_home = NodeHome(tmp_path / "stranger")
        stranger_home.trust(origin.keypair().public.decode())  # it trusts us, we do not trust it
        answer = Answer("stranger")
        stranger = await start_node(tmp_path / "stranger", "stranger-swarm", answer)
        local = LocalRecorder()
        swarm = SwarmExecutor(project, local=local, home=origin, discovery_wait=1.5)
        try:
            await swarm.start()
            assert swarm.discovery is not None
            for _ in range(200):  # bounded: wait until the stranger is known, so the choice is real
                if any(p.node_id == stranger.node_id for p in swarm.discovery.peers()):
                    break
                await asyncio.sleep(0.05)
            assert any(p.node_id == stranger.node_id for p in swarm.discovery.peers())
            cs = await swarm.execute(make_task("t1"), {"pkg/mod.py": b"x = 1\n"})
            assert cs.reason == "local"
            assert local.ran == ["t1"] and answer.payloads == []
        finally:
            await swarm.aclose()
            await stranger.close()

    run(scenario(), timeout=60)


@contextlib.asynccontextmanager
async def one_node_swarm(project: Path, tmp_path: Path, name: str,
                         answer: Answer) -> AsyncIterator[tuple[SwarmExecutor, LocalRecorder, VoyagerNode]]:
    """An origin and one trusted node ``name`` on loopback, the swarm started; both closed at the end."""
    origin = NodeHome(tmp_path / "origin")
    trust_both(origin, NodeHome(tmp_path / "n1"))
    node = await start_node(tmp_path / "n1", name, answer)
    local = LocalRecorder()
    swarm = SwarmExecutor(project, local=local, home=origin, discovery_wait=15)
    try:
        await swarm.start()
        yield swarm, local, node
    finally:
        await swarm.aclose()
        await node.close()


def test_node_stopping_mid_task_hands_it_back_and_it_runs_locally(project: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        answer = Answer("n1", hold=asyncio.Event())  # never finishes on its own
        async with one_node_swarm(project, tmp_path, "n1-stop", answer) as (swarm, local, node):
            pending = asyncio.ensure_future(swarm.execute(make_task("t1"), {"pkg/mod.py": b"x = 1\n"}))
            await asyncio.wait_for(answer.started.wait(), 10)
            await node.close()  # Ctrl+C on the peer: the task is handed back, not lost
            cs = await asyncio.wait_for(pending, 20)
            assert cs.reason == "local" and local.ran == ["t1"]
            assert swarm.stats.rerouted == 1
            assert "Cancelled" in swarm.stats.failures[0]

    run(scenario(), timeout=60)


def test_restarted_node_gets_the_files_again(project: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        origin = NodeHome(tmp_path / "origin")
        trust_both(origin, NodeHome(tmp_path / "n1"))
        node = await start_node(tmp_path / "n1", "n1-blobs", Answer("n1"))
        swarm = SwarmExecutor(project, local=None, home=origin, discovery_wait=15)
        try:
            await swarm.start()
            await swarm.execute(make_task("t1"), {"pkg/mod.py": b"x = 1\n"})
            assert node.blobs is not None
            shutil.rmtree(node.blobs.root)  # the node lost its store (as after a restart)
            node.blobs.root.mkdir()
            cs = await swarm.execute(make_task("t2"), {"pkg/mod.py": b"x = 1\n"})
            assert cs.verification.node == "n1-blobs"
            assert swarm.stats.blobs_sent == 6
        finally:
            await swarm.aclose()
            await node.close()

    run(scenario(), timeout=60)


def test_node_refuses_bad_task_payloads(project: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        origin = NodeHome(tmp_path / "origin")
        trust_both(origin, NodeHome(tmp_path / "n1"))
        answer = Answer("n1")
        node = await start_node(tmp_path / "n1", "n1-bad", answer)
        swarm = SwarmExecutor(project, local=None, home=origin, discovery_wait=15)
        try:
            await swarm.start()
            key = origin.trusted_keys().pop()
            swarm.transport.connect("n1", "127.0.0.1", node.transport.port, key)
            good = {
                "task": make_task("t1").to_wire(),
                "files": {"pkg/mod.py": b"x = 1\n"},
                "base_hashes": {"pkg/mod.py": content_hash(b"x = 1\n")},
                "manifest": {},
            }
            cases = {
                "BaseHashMismatch": {**good, "base_hashes": {"pkg/mod.py": content_hash(b"other")}},
                "MissingBlobs": {**good, "manifest": {"pkg/mod.py": content_hash(b"never sent")}},
                "ValueError": {**good, "manifest": {"../../etc/passwd": content_hash(b"x")}},
            }
            for kind, payload in cases.items():
                with pytest.raises(RemoteError) as err:
                    await swarm.transport.request("n1", "task.run", payload, timeout=10)
                assert err.value.kind == kind
            with pytest.raises(RemoteError, match="does not match its content"):
                await swarm.transport.request("n1", "blobs.put", {content_hash(b"a"): b"b"}, timeout=10)
            assert answer.payloads == []  # nothing bad reached a worker
            assert await swarm.transport.request("n1", "task.run", good, timeout=10)
        finally:
            await swarm.aclose()
            await node.close()

    run(scenario(), timeout=60)


def test_wrong_lineage_from_a_peer_is_not_accepted(project: Path, tmp_path: Path) -> None:
    class Liar(Answer):
        async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
            wire = await super().__call__(payload)
            wire["verification"]["remote"]["root_task_id"] = "someone-else"
            return wire

    async def scenario() -> None:
        async with one_node_swarm(project, tmp_path, "n1-liar", Liar("n1")) as (swarm, _local, _node):
            cs = await swarm.execute(make_task("t1"), {"pkg/mod.py": b"x = 1\n"})
            assert cs.reason == "local"
            assert "another lineage" in swarm.stats.failures[0]

    run(scenario(), timeout=60)


def test_llm_agent_tasks_stay_on_the_origin(project: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        answer = Answer("n1")
        async with one_node_swarm(project, tmp_path, "n1-llm", answer) as (swarm, local, _node):
            task = make_task("t1")
            refactor = AgentTask(
                "t2", "refactor", "refactor", task.target, task.files, task.priority, task.context, {}
            )
            cs = await swarm.execute(refactor, {"pkg/mod.py": b"x = 1\n"})
            assert cs.reason == "local" and local.ran == ["t2"] and answer.payloads == []
            cs = await swarm.execute(task, {"pkg/mod.py": b"x = 1\n"})  # an offline fixer does travel
            assert cs.verification.node == "n1-llm"

    run(scenario(), timeout=60)


def test_a_node_refuses_a_task_of_a_spent_chain_and_the_origin_does_not_run_it_elsewhere(
    project: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        answer = Answer("n1")
        async with one_node_swarm(project, tmp_path, "n1-spent", answer) as (swarm, local, _node):
            budget = Budget(tokens=5)
            task = make_task("t-spent", budget)
            with pytest.raises(BudgetExceeded):
                budget.charge(tokens=6)  # the chain spent its tokens elsewhere after the task was planned
            with pytest.raises(BudgetExceeded, match=r"token budget exhausted: used 6 of 5 tokens \(refused by n1-spent\)"):
                await swarm.execute(task, {"pkg/mod.py": b"x = 1\n"})
            assert answer.payloads == [] and local.ran == []  # no worker ran it, nor this machine
            assert swarm.stats.rerouted == 0 and swarm.stats.local == 0

    run(scenario(), timeout=60)
