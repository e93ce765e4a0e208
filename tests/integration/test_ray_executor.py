"""Must-show for ``improve --executor ray``: a real Ray cluster of two node processes on this machine.

The module starts a head node and one more worker node (``ray start --block``, one CPU each, loopback,
a private temp dir) and tears them down at the end. On it: an improve run keeps the same changes as a
local run of the same plan; a Ray worker process SIGKILLed mid-task loses no task and applies none
twice; a Critical task submitted while the cluster is full starts before the queued Low ones (and a
running Low one is preempted on Ray to make room).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install 'pyagent[ray]')")

from pyagent.fleet.core import FleetManager, TaskControl  # noqa: E402
from pyagent.model.context import CascadeContext  # noqa: E402
from pyagent.model.priority import AgentPriority  # noqa: E402
from pyagent.model.task import AgentTask, ChangeSet  # noqa: E402
from pyagent.pipeline.builder import make_test_agent, pipeline_shell, run_tests  # noqa: E402
from pyagent.pipeline.ray_executor import RayCluster, RayExecutor  # noqa: E402
from pyagent.pipeline.settings import PipelineSettings  # noqa: E402
from tests.improve_helpers import make_project  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a Ray cluster starts slowly on a loaded machine

FINAL = {"kept", "rolled_back", "failed", "skipped"}
TEST_CMD = f"{sys.executable} -m unittest discover -s tests"
TASK_TITLE = b"ray::pyagent_task"
# Ray's defaults expect an idle machine: a raylet aborts when its dashboard agent is not up within 15 s
# (then the node is started again below). Ray's sources must be byte-compiled (.ci/run does it): with
# PYTHONDONTWRITEBYTECODE every agent compiles them afresh and misses that deadline on a busy machine.
SLOW_MACHINE = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",  # the same for nodes and drivers, whatever token ~/.ray may hold
    "RAY_agent_register_timeout_ms": "300000",
    "RAY_raylet_start_wait_time_s": "300",
}
# `ray start` with more patience: its node startup gives the raylet a fixed 30 s to register (a constant
# in ray/_private/node.py), less than its agents may take to come up on such a machine.
RAY_START = """
import sys, time
import ray._private.services as services
_get_node = services.get_node
def get_node(*args, **kwargs):
    deadline = time.monotonic() + 120
    while True:
        try:
            return _get_node(*args, **kwargs)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
services.get_node = get_node
from ray.scripts.scripts import main
sys.exit(main())
"""
_NODE_SESSIONS: set[int] = set()  # each `ray start --block` leads its own session (start_new_session)

MORE = """\
from typing import Dict, List


def pairs(items: List[str]) -> Dict[str, int]:
    out = {}
    for i, x in enumerate(items):
        out[x] = i
    return out


def label(n):
    if n == None:
        return "-"
    else:
        return "#{}".format(n)
"""

MORE_TESTS = """\
import time
import unittest

from pkg.more import label, pairs


class TestMore(unittest.TestCase):
    def test_pairs(self):
        time.sleep(0.5)  # long enough for a task to be caught running
        self.assertEqual(pairs(["a", "b"]), {"a": 0, "b": 1})

    def test_label(self):
        self.assertEqual(label(None), "-")
        self.assertEqual(label(2), "#2")
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_args(ports: list[int]) -> list[str]:
    return [
        "--num-cpus=1",
        "--node-ip-address=127.0.0.1",
        "--object-store-memory=80000000",
        "--disable-usage-stats",
        f"--node-manager-port={ports[0]}",
        f"--object-manager-port={ports[1]}",
        f"--dashboard-agent-listen-port={ports[2]}",
        f"--dashboard-agent-grpc-port={ports[3]}",
        f"--metrics-export-port={ports[4]}",
        f"--runtime-env-agent-port={ports[5]}",
    ]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):  # workers first, the head last
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in the group this test started for the node


def _start_node(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``ray start --block`` until its node is up; a start that times out under load is tried again."""
    for attempt in range(3):
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            if b"Ray runtime started" in log.read_bytes():
                return proc
            time.sleep(0.5)
        _stop([proc])  # and what the failed start left of its node
        if attempt == 2:
            raise AssertionError(f"{argv[3:5]} never came up: {log.read_text(errors='replace')[-3000:]}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head and one worker node (one CPU each) on 127.0.0.1; yields the head's address."""
    temp = Path(tempfile.mkdtemp(prefix="pyr-"))  # short: Ray's socket paths must fit 107 bytes
    ray_cli = [sys.executable, "-c", RAY_START]
    env = {**os.environ, **SLOW_MACHINE}
    head_port, *ports = _free_ports(13)
    address = f"127.0.0.1:{head_port}"
    procs: list[subprocess.Popen[bytes]] = []
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this process's driver, like the nodes
    try:
        procs.append(_start_node(
            [*ray_cli, "start", "--head", "--block", f"--port={head_port}", "--include-dashboard=false",
             f"--temp-dir={temp}", *_node_args(ports[:6])],
            temp / "head.log", env,
        ))
        ray.init(address=address, log_to_driver=False)
        procs.append(_start_node(
            [*ray_cli, "start", "--block", f"--address={address}", *_node_args(ports[6:12])], temp / "worker.log", env
        ))
        deadline = time.monotonic() + 60
        while sum(1 for n in ray.nodes() if n["Alive"]) < 2:
            assert time.monotonic() < deadline, "the worker node never joined"
            time.sleep(0.5)
        _NODE_SESSIONS.update(p.pid for p in procs)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(procs)
        shutil.rmtree(temp, True)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def _project(root: Path) -> Path:
    make_project(root)
    (root / "pkg" / "more.py").write_text(MORE)
    (root / "tests" / "test_more.py").write_text(MORE_TESTS)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    return root


def _improve(project: Path, *extra: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pyagent", "improve", str(project), "--test-cmd", TEST_CMD, "--max-tasks", "6",
         "--no-memory", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def _outcome(project: Path, proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    report = json.loads(next((project / ".pyagent" / "reports").glob("*/report.json")).read_text())
    kept = sorted((t["agent"], t["action"], t["target"]) for t in report["tasks"] if t["status"] == "kept")
    branch = report["branch"]
    files = {p: _git(project, "show", f"{branch}:{p}") for p in ("pkg/mod.py", "pkg/more.py")} if branch else {}
    return {"report": report, "kept": kept, "files": files, "output": out}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, clean_env_module: dict[str, str]) -> dict[str, Any]:
    project = _project(tmp_path_factory.mktemp("local") / "p")
    return _outcome(project, _improve(project, "--executor", "local", "--concurrency", "2", env=clean_env_module))


@pytest.fixture(scope="module")
def clean_env_module() -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("FORCE_COLOR", None)
    return env


def test_improve_on_ray_keeps_what_a_local_run_keeps(
    cluster: str, local_run: dict[str, Any], clean_env_module: dict[str, str], tmp_path: Path
) -> None:
    project = _project(tmp_path / "p")
    started = time.time()
    ran = _outcome(project, _improve(project, "--executor", f"ray:{cluster}", env=clean_env_module))
    assert local_run["kept"], local_run["output"][-3000:]
    assert ran["kept"] == local_run["kept"]
    assert ran["files"] == local_run["files"]  # the same branch content, change for change
    tasks = ran["report"]["tasks"]
    assert all(t["status"] in FINAL for t in tasks)
    remote = [t for t in tasks if t["verification"].get("remote")]
    assert len(remote) == len(tasks)  # every task ran on the cluster, under the run's own lineage
    assert all(t["verification"]["remote"]["lineage"] == t["lineage"] for t in remote)
    nodes = {t["verification"]["node"] for t in remote}
    assert len(nodes) == 2, nodes  # the work really was spread over both nodes
    note = next(n for n in ran["report"]["notes"] if n.startswith("ray ("))
    assert f"{len(tasks)} task(s) ran on the cluster" in note, note
    assert "2 task(s) at once" in " ".join(ran["report"]["notes"])  # two free CPUs: two in flight, the rest queued here
    # the run's snapshot was removed from the nodes when it ended
    unpacked = Path(tempfile.gettempdir(), f"pyagent-ray-{os.getuid()}").glob("*-*")
    assert [p for p in unpacked if p.stat().st_mtime >= started] == []


def _session(pid: str) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[3])  # field 6: the session id


def _running_tasks() -> list[int]:
    """Ray worker processes of this module's cluster (in the sessions of its nodes) running a pyagent task."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(TASK_TITLE) and _session(pid) in _NODE_SESSIONS:
                found.append(int(pid))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_a_worker_killed_mid_task_loses_no_task_and_applies_none_twice(
    cluster: str, local_run: dict[str, Any], clean_env_module: dict[str, str], tmp_path: Path
) -> None:
    project = _project(tmp_path / "p")
    proc = _improve(project, "--executor", f"ray:{cluster}", env=clean_env_module)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and proc.poll() is None and time.monotonic() < deadline:
        running = _running_tasks()
        if running:
            victim = running[0]
            os.kill(victim, signal.SIGKILL)
        else:
            time.sleep(0.05)
    assert victim is not None, "no Ray worker was ever seen running a task"
    ran = _outcome(project, proc)
    report = ran["report"]
    tasks = {t["id"]: t for t in report["tasks"]}
    assert len(tasks) == len(report["tasks"])  # each task reported once
    assert all(t["status"] in FINAL and t["status"] != "failed" for t in tasks.values()), tasks
    note = next(n for n in report["notes"] if n.startswith("ray ("))
    assert "1 re-run after a worker died" in note, note
    assert all(t["verification"]["remote"]["pid"] != victim for t in tasks.values() if t["verification"].get("remote"))
    # no task lost: the same changes are kept as by the local run
    assert ran["kept"] == local_run["kept"]
    assert ran["files"] == local_run["files"]
    # none applied twice: one commit per kept task, no task committed twice
    kept = {t["id"] for t in tasks.values() if t["status"] == "kept"}
    messages = _git(project, "log", "--format=%B%x00", f"{report['base_commit']}..{report['branch']}").split("\x00")
    committed = [word for msg in messages for word in msg.replace(",", " ").split() if word in tasks]
    assert sorted(committed) == sorted(kept)


def _task(i: int, priority: AgentPriority) -> AgentTask:
    ctx = CascadeContext.root("improve", task_id=f"{priority.name.lower()}-{i}")
    return AgentTask(
        id=ctx.task_id, agent="modernize", kind="ruff-fix", target="pkg/more.py", files=("pkg/more.py",),
        priority=priority, context=ctx, params={"rule": "UP006"},
    )


def test_a_critical_task_submitted_while_the_cluster_is_full_starts_before_queued_low_ones(
    cluster: str, tmp_path: Path
) -> None:
    root = _project(tmp_path / "p")
    settings = PipelineSettings(test_cmd=TEST_CMD)
    tests = make_test_agent(root, settings, pipeline_shell())
    assert tests is not None
    baseline = asyncio.run(run_tests(tests, tests.task(CascadeContext.root("improve")), root))
    files = {"pkg/more.py": (root / "pkg/more.py").read_bytes()}

    async def scenario() -> tuple[RayExecutor, dict[str, ChangeSet], list[str]]:
        ex = RayExecutor(root, cluster=RayCluster.connect(cluster), settings=settings, baseline=baseline)
        assert ex.slots() == 2
        results: dict[str, ChangeSet] = {}
        started: list[str] = []

        def job(task: AgentTask) -> Any:
            async def run(control: TaskControl) -> None:
                results[task.id] = await ex.execute(task, files)
            return run

        async with FleetManager(ex.slots(), on_event=lambda e: started.append(e.task_id) if e.kind == "started" else None) as fleet:
            for i in (1, 2):
                t = _task(i, AgentPriority.LOW)
                fleet.submit(t.id, job(t), priority=t.priority, context=t.context)
            while ex.stats.submitted < 2:  # both slots busy on Ray
                await asyncio.sleep(0.02)
            for i in (3, 4):
                t = _task(i, AgentPriority.LOW)
                fleet.submit(t.id, job(t), priority=t.priority, context=t.context)
            t = _task(5, AgentPriority.CRITICAL)
            fleet.submit(t.id, job(t), priority=t.priority, context=t.context)
            await fleet.join()
        await ex.aclose()
        return ex, results, started

    ex, results, started = asyncio.run(scenario())
    assert sorted(results) == ["critical-5", "low-1", "low-2", "low-3", "low-4"]
    assert all(cs.passed for cs in results.values()), {k: cs.reason for k, cs in results.items()}
    began = {k: cs.verification.remote.started for k, cs in results.items() if cs.verification.remote is not None}
    assert len(began) == 5
    # the fleet started it before the queued Low ones, and so did Ray
    assert started.index("critical-5") < min(started.index("low-3"), started.index("low-4")), started
    assert began["critical-5"] < min(began["low-3"], began["low-4"]), began
    # it did not wait for a Low task to finish: one running Low task was cancelled on Ray and run again
    assert ex.stats.preempted == 1
    assert ex.stats.submitted == 6
