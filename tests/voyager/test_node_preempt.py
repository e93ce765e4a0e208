"""Preemption on a real Voyager node serving two origins: one slot, a Low task whose gate runs a real
20-second test, then a Critical task from another origin. The Critical one starts at once, the Low one's
processes are stopped while it runs (checked in /proc), and the Low one then finishes with the right
result; its test timeout (shorter than its whole run) did not count the frozen time.

Everything is real: the node's worker processes, the sandboxed test runs, CurveZMQ on loopback, mDNS on
127.0.0.1, the ruff agent and the gate.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from pyagent.model.budget import Budget
from pyagent.model.context import CascadeContext
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask
from pyagent.model.verification import Verdict
from pyagent.pipeline.builder import make_test_agent, pipeline_shell, run_tests
from pyagent.pipeline.settings import PipelineSettings
from pyagent.voyager.home import NodeHome
from pyagent.voyager.node import NodeConfig, VoyagerNode
from pyagent.voyager.swarm import SwarmExecutor
from tests.procfs import pids_with, stopped
from tests.voyager.conftest import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TEST_TIMEOUT = 45.0  # Low's origin: > its test's 20 s of work, < 20 s + the time it is frozen (>= 40 s)
CRITICAL_SECONDS = 40  # the test's length once Critical's change is in: it holds the slot at least this long

SLOW_TEST = """
import subprocess
import sys
from pathlib import Path


def test_slow():
    # 20 s, or CRITICAL_SECONDS in a copy where Critical's change (no `import sys` in pkg/crit.py) is in
    crit = (Path(__file__).parents[1] / "pkg" / "crit.py").read_text()
    ticks = 200 if "import sys" in crit else CRITICAL_SECONDS * 10
    # a child with a marker in its command line, so the test can find this run's processes in /proc
    code = f"import time\\nfor _ in range({ticks}):\\n    time.sleep(0.1)\\nprint('slept')"
    out = subprocess.run([sys.executable, "-c", code, "MARKER"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "slept"
"""


def _project(root: Path, marker: str) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "low.py").write_text("import os\n\nX = 1\n")
    (root / "pkg" / "crit.py").write_text("import sys\n\nY = 2\n")
    (root / "tests").mkdir()
    (root / "tests" / "__init__.py").write_text("")
    test = SLOW_TEST.replace("MARKER", marker).replace("CRITICAL_SECONDS", str(CRITICAL_SECONDS))
    (root / "tests" / "test_slow.py").write_text(test)
    return root


def _task(task_id: str, target: str, priority: AgentPriority) -> AgentTask:
    ctx = CascadeContext.root("improve", action=f"preempt:{task_id}", budget=Budget()).next_level("lint", task_id)
    return AgentTask(
        id=task_id, agent="lint", kind="ruff-fix", target=target, files=(target,), priority=priority,
        context=ctx, params={"rule": "F401", "action": "lint:F401"},
    )


def test_a_critical_task_freezes_a_running_low_one_on_a_one_slot_node(tmp_path: Path) -> None:
    marker = f"pyagent-preempt-{uuid.uuid4().hex}"
    project = _project(tmp_path / "project", marker)
    settings = PipelineSettings(test_timeout=TEST_TIMEOUT)
    crit_settings = PipelineSettings(test_timeout=300.0)  # another origin, its own settings
    node_home, home_a, home_b = NodeHome(tmp_path / "node"), NodeHome(tmp_path / "a"), NodeHome(tmp_path / "b")
    for origin in (home_a, home_b):
        origin.trust(node_home.keypair().public.decode())
        node_home.trust(origin.keypair().public.decode())
    events: dict[tuple[str, str], float] = {}
    samples: list[tuple[float, list[bool]]] = []

    def on_task(event: str, task_id: str, detail: str) -> None:
        events[(event, task_id)] = time.monotonic()

    async def scenario() -> None:
        tests = make_test_agent(project, settings, pipeline_shell())
        assert tests is not None
        # the real 20 s run, once, as the origins do
        baseline = (await run_tests(tests, tests.task(CascadeContext.root("improve")), project)).to_dict()
        node = VoyagerNode(NodeConfig(name="n-preempt", home=str(node_home.path), slots=1), on_task=on_task)
        await node.start()
        a = SwarmExecutor(project, home=home_a, settings=settings, baseline=baseline, discovery_wait=15)
        b = SwarmExecutor(project, home=home_b, settings=crit_settings, baseline=baseline, discovery_wait=15)
        try:
            await a.start()
            await b.start()
            low_files = {"pkg/low.py": (project / "pkg/low.py").read_bytes()}
            low = asyncio.ensure_future(a.execute(_task("low", "pkg/low.py", AgentPriority.LOW), low_files))
            low_pids: list[int] = []
            while not low_pids:  # Low's gate is running the project's test (its marked child exists)
                assert not low.done(), low.result().reason
                await asyncio.sleep(0.1)
                low_pids = pids_with(marker)
            await asyncio.sleep(1.0)  # it has been running for a while
            assert not any(stopped(p) for p in low_pids)
            submitted = time.monotonic()
            crit_files = {"pkg/crit.py": (project / "pkg/crit.py").read_bytes()}
            crit = asyncio.ensure_future(b.execute(_task("crit", "pkg/crit.py", AgentPriority.CRITICAL), crit_files))
            while ("started", "crit") not in events:
                assert not crit.done(), crit.result().reason
                await asyncio.sleep(0.02)
            assert events[("started", "crit")] - submitted < 1.0, "the Critical task waited for the slot"
            while not crit.done():
                alive = [p for p in low_pids if Path(f"/proc/{p}").exists()]
                samples.append((time.monotonic(), [stopped(p) for p in alive]))
                await asyncio.sleep(0.5)
            crit_change = crit.result()
            assert crit_change.passed, crit_change.reason
            assert set(crit_change.changes) == {"pkg/crit.py"}
            assert (crit_change.changes["pkg/crit.py"] or b"").strip() == b"Y = 2"  # the unused import is gone
            low_change = await low
            assert low_change.verification.verdict is Verdict.VERIFIED, low_change.reason
            assert set(low_change.changes) == {"pkg/low.py"}
            assert (low_change.changes["pkg/low.py"] or b"").strip() == b"X = 1"
            assert low_change.verification.tests["failed"] == 0 and low_change.verification.tests["passed"] == 1
            assert low_change.verification.node == "n-preempt"
        finally:
            await a.aclose()
            await b.aclose()
            await node.close()

    run(scenario(), timeout=540)
    # Low's processes were stopped for the whole time Critical ran (its first samples may catch the freeze
    # landing: the freeze is asked for when Critical is accepted, sampling starts right after).
    settled = [s for t, s in samples if t > events[("started", "crit")] + 1.0]
    assert len(settled) >= 10 and all(s and all(s) for s in settled), samples
    frozen_for = samples[-1][0] - events[("started", "crit")]
    assert frozen_for >= CRITICAL_SECONDS and 20.0 + frozen_for > TEST_TIMEOUT, "had it counted, Low would time out"
    assert events[("done", "low")] > events[("done", "crit")]
