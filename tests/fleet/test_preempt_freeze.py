"""Preemption of running work: a Low task's real 20-second test run is frozen (its processes stopped,
checked in /proc) while a Critical task takes the only slot, then thawed; it finishes correctly and its
timeout does not count the frozen time."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import pytest

from pyagent.fleet.core import FleetManager, TaskControl
from pyagent.model.priority import AgentPriority as P
from pyagent.shell import Confinement, SecureShell, ShellResult
from pyagent.shell.limits import freezer_cgroup_base
from tests.procfs import cgroup_frozen, pids_with, stat

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SLOW_TEST = """
import time

def test_twenty_seconds():
    ticks = 0
    while ticks < 200:
        time.sleep(0.1)
        ticks += 1
        with open("progress.txt", "w") as f:
            f.write(str(ticks))
    assert ticks == 200
"""
SHELL_TIMEOUT = 45.0  # < 20 s of work + 25 s frozen (+ start-up): passes only if the frozen time is not counted
FROZEN_FOR = 25.0


def _progress(proj: Path) -> int:
    try:
        return int((proj / "progress.txt").read_text() or 0)
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("freezer", ["auto", "signal"])
def test_critical_freezes_a_running_low_test_run_and_low_finishes_afterwards(tmp_path: Path, freezer: str) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    test_file = f"test_slow_{uuid.uuid4().hex[:10]}.py"
    (proj / test_file).write_text(SLOW_TEST)
    shell = SecureShell(timeout=SHELL_TIMEOUT, confine=Confinement(freezer=freezer))  # type: ignore[arg-type]
    samples: list[tuple[float, list[str], bool, int]] = []
    times: dict[str, float] = {}

    async def low(c: TaskControl) -> ShellResult:
        return await shell.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file], cwd=proj)

    async def critical(c: TaskControl) -> str:
        times["critical_started"] = time.monotonic()
        await asyncio.sleep(1.0)  # let the freeze settle, then watch Low's processes for the rest
        end = time.monotonic() + FROZEN_FOR - 1.0
        while time.monotonic() < end:
            pids = pids_with(test_file)
            if pids:
                states = [stat(p)[0] for p in pids]
                parents = [stat(p)[1] for p in pids]  # the namespace's init (stopped too with SIGSTOP)
                states += [stat(p)[0] for p in parents if p > 1]
                frozen = all(cgroup_frozen(p) for p in pids) if freezer == "auto" and freezer_cgroup_base() else False
                samples.append((time.monotonic(), states, frozen, _progress(proj)))
            await asyncio.sleep(0.5)
        return "critical done"

    async def main() -> tuple[ShellResult, str, float]:
        # Default aging: a task ages only while it waits in the queue, so Low's running time does not let
        # it out-age the Critical task however long the interpreter takes to start on a loaded machine.
        async with FleetManager(1) as fleet:
            h_low = fleet.submit("low tests", low, priority=P.LOW, timeout=SHELL_TIMEOUT + 1.0)
            while _progress(proj) < 20:  # Low's test is really running (2 s of its 20 s)
                await asyncio.sleep(0.1)
            submitted = time.monotonic()
            h_crit = fleet.submit("critical", critical, priority=P.CRITICAL)
            crit = await h_crit.result()
            res = await h_low.result()
            return res, crit, times["critical_started"] - submitted

    started = time.monotonic()
    res, crit, latency = asyncio.run(main())
    wall = time.monotonic() - started
    assert crit == "critical done"
    assert latency < 1.0, f"Critical waited {latency:.2f}s for the slot"
    assert len(samples) >= 10
    for _, states, frozen, _ in samples:
        if freezer == "signal" or freezer_cgroup_base() is None:
            assert states and all(s == "T" for s in states), states  # stopped (SIGSTOP of the tree)
        else:
            assert frozen and all(s != "R" for s in states), states  # cgroup v2 freezer: frozen, not running
    assert len({p for *_, p in samples}) == 1, "the test made progress while frozen"
    assert res.ok and "1 passed" in res.stdout, (res.exit_code, res.timed_out, res.duration, res.stdout[-800:], res.stderr[-800:])
    assert _progress(proj) == 200
    assert res.frozen_seconds >= FROZEN_FOR - 1.0
    assert res.duration > SHELL_TIMEOUT and wall > SHELL_TIMEOUT, "the frozen time was not counted"
    assert not res.timed_out
