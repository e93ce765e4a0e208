"""One budget across swarm nodes: a chain's wall-time budget is enforced by the node that would run its task.

A real Voyager node (its worker processes, the ruff agent, the sandboxed tests, the gate) on CurveZMQ
over loopback, found by mDNS on 127.0.0.1. The chain's budget travels with each task; the node rebuilds
it with the origin's spend and elapsed time, so once the chain's wall time is over the node refuses the
chain's next task (the origin does not check it first here), and the origin ends that task with the
node's reason instead of running it elsewhere.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pyagent.model.budget import Budget
from pyagent.model.context import CascadeContext
from pyagent.model.errors import BudgetExceeded
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask
from pyagent.model.verification import Verdict
from pyagent.pipeline.builder import build_executor, make_test_agent, pipeline_shell, run_tests
from pyagent.pipeline.settings import PipelineSettings
from pyagent.voyager.home import NodeHome
from pyagent.voyager.node import NodeConfig, VoyagerNode
from pyagent.voyager.swarm import SwarmExecutor
from tests.voyager.conftest import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# The chain's wall time: long enough for its first task to reach the node on a loaded machine.
WALL_SECONDS = 15.0


def _project(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "first.py").write_text("import os\n\nX = 1\n")
    (root / "pkg" / "second.py").write_text("import sys\n\nY = 2\n")
    (root / "tests").mkdir()
    (root / "tests" / "__init__.py").write_text("")
    (root / "tests" / "test_pkg.py").write_text("from pkg.first import X\n\n\ndef test_x():\n    assert X == 1\n")
    return root


def _task(chain: CascadeContext, target: str) -> AgentTask:
    ctx = chain.next_level("lint", f"lint:F401:{target}")
    return AgentTask(
        id=ctx.task_id, agent="lint", kind="ruff-fix", target=target, files=(target,),
        priority=AgentPriority.STANDARD, context=ctx, params={"rule": "F401", "action": "lint:F401"},
    )


def test_a_node_refuses_the_next_task_of_a_chain_whose_wall_time_ran_out(tmp_path: Path) -> None:
    project = _project(tmp_path / "project")
    settings = PipelineSettings()
    node_home, origin = NodeHome(tmp_path / "node"), NodeHome(tmp_path / "origin")
    origin.trust(node_home.keypair().public.decode())
    node_home.trust(origin.keypair().public.decode())
    events: list[tuple[str, str, str]] = []

    def on_task(event: str, task_id: str, detail: str) -> None:
        events.append((event, task_id, detail))

    async def scenario() -> None:
        shell = pipeline_shell()
        tests = make_test_agent(project, settings, shell)
        assert tests is not None
        baseline = await run_tests(tests, tests.task(CascadeContext.root("improve")), project)
        assert baseline.passed == 1
        # the origin's own pipeline, for tasks no peer takes: it must not be used for a spent chain
        local = build_executor(project, settings, shell=shell, tests=tests, baseline=baseline)
        node = VoyagerNode(NodeConfig(name="n-budget", home=str(node_home.path), slots=1), on_task=on_task)
        await node.start()
        swarm = SwarmExecutor(
            project, local=local, home=origin, settings=settings, baseline=baseline.to_dict(), discovery_wait=15
        )
        try:
            await swarm.start()
            budget = Budget(wall_seconds=WALL_SECONDS)
            chain = CascadeContext.root("improve", action="improve:budget", budget=budget)
            first, second = _task(chain, "pkg/first.py"), _task(chain, "pkg/second.py")
            change = await swarm.execute(first, {"pkg/first.py": (project / "pkg/first.py").read_bytes()})
            assert change.verification.verdict is Verdict.VERIFIED, change.reason
            assert change.verification.node == "n-budget"  # it ran on the node, within the chain's time
            assert (change.changes["pkg/first.py"] or b"").strip() == b"X = 1"
            assert ("started", first.id) in [(e, t) for e, t, _ in events]
            # the chain's wall time runs out at the origin; nothing is charged in between
            await asyncio.sleep(max(0.0, WALL_SECONDS - budget.elapsed()) + 0.5)
            with pytest.raises(BudgetExceeded, match=r"wall-time budget exhausted: \d+\.\ds of 15\.0s") as err:
                await swarm.execute(second, {"pkg/second.py": (project / "pkg/second.py").read_bytes()})
            assert "refused by n-budget" in str(err.value)
            refused = [detail for e, t, detail in events if t == second.id]
            assert len(refused) == 1 and refused[0].startswith("BudgetExceeded: wall-time budget exhausted")
            assert swarm.stats.local == 0 and swarm.stats.rerouted == 0  # not run here nor elsewhere
            assert ("started", second.id) not in [(e, t) for e, t, _ in events]
        finally:
            await swarm.aclose()
            await node.close()

    run(scenario(), timeout=240)
