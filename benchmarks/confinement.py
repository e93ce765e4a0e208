"""Cost of confinement per command and per gate run, confined beside unconfined, in one run.

* ``pyagent exec -- true``: the real CLI as a subprocess, median of N runs each way (``--no-sandbox`` is
  the unconfined anchor); target: confined - unconfined < 30 ms;
* ``SecureShell.run(["true"])`` in-process (the same, without the CLI's interpreter start);
* one gate run: the product's test agent on a two-test pytest project, median of a few runs each way;
* where the confined side's time goes: each kernel step the supervisor makes (user, PID, mount and
  network namespaces, the private root, private tmp, the Landlock ruleset), timed in a forked child
  with the product's own primitives (``pyagent.shell._sandbox``) and the real plan, median of 10.

Beside the wall-clock medians it prints the best run and the CPU time (user + system, this process and
its children, median per run), and the machine's load average at the start and the end: on a shared,
loaded machine the wall median mostly measures the queue for a core; the best run comes closest to a
quiet machine, CPU time is what the sandbox itself costs.

    python benchmarks/confinement.py [--runs 50] [--gate-runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pyagent.agents.testing import TestAgent, discover_tests
from pyagent.model.context import CascadeContext
from pyagent.shell import Confinement, SecureShell
from pyagent.shell import _sandbox as sb
from pyagent.shell.confine import plan

TARGET_MS = 30.0


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Sample:
    """One side's per-run figures: wall median and minimum (ms), CPU median (ms, user + system of this
    process and its children). On a machine shared by other work the wall median mostly measures the
    queue for a core; the minimum comes closest to a quiet machine; CPU time is what the side costs."""

    def __init__(self, walls: list[float], cpus: list[float]) -> None:
        self.wall = statistics.median(walls) * 1000
        self.wall_min = min(walls) * 1000
        self.cpu = statistics.median(cpus) * 1000


def paired(confined: Callable[[], object], plain: Callable[[], object], runs: int) -> tuple[Sample, Sample]:
    """(confined, unconfined): runs alternate, so a change in the machine's load during the benchmark
    hits both sides alike."""
    confined()  # warm caches (page cache, the shell's path lists)
    plain()
    walls: tuple[list[float], list[float]] = ([], [])
    cpus: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for side, fn in enumerate((confined, plain)):
            cpu0, t = _cpu(), time.perf_counter()
            fn()
            walls[side].append(time.perf_counter() - t)
            cpus[side].append(_cpu() - cpu0)
    return Sample(walls[0], cpus[0]), Sample(walls[1], cpus[1])


def cli(args: list[str], cwd: str) -> Callable[[], object]:
    true = shutil.which("true") or "/bin/true"
    argv = [sys.executable, "-m", "pyagent", "exec", *args, "--cwd", cwd, "--", true]

    def go() -> None:
        subprocess.run(argv, check=True, capture_output=True)

    return go


def in_process(confine: Confinement, cwd: str) -> Callable[[], object]:
    shell = SecureShell(confine=confine)
    true = shutil.which("true") or "/bin/true"

    def go() -> None:
        assert shell.run_sync([true], cwd=cwd).ok

    return go


def gate(confine: Confinement, project: Path) -> Callable[[], object]:
    command = discover_tests(project)
    assert command is not None
    agent = TestAgent(command, SecureShell(timeout=120.0, confine=confine), timeout=120.0)
    task = agent.task(CascadeContext.root("benchmark"))

    def go() -> None:
        res = asyncio.run(agent.run(task, project)).tests
        assert res is not None and sorted(res.outcomes.values()) == ["passed", "passed"], res

    return go


def _time_steps(tmp: str, conf: dict[str, object], cwd: str) -> dict[str, float]:
    """In a forked child: each step the supervisor makes, timed (ms)."""
    times: dict[str, float] = {}

    def step(name: str, fn: Callable[[], object]) -> None:
        t = time.perf_counter()
        fn()
        times[name] = (time.perf_counter() - t) * 1000

    view, read, write, files = (list(conf[k]) for k in ("view", "read", "write", "write_files"))  # type: ignore[call-overload]
    step("user namespace", sb.enter_user_namespace)
    step("pid namespace (unshare)", lambda: sb.unshare(sb.CLONE_NEWPID))
    step("mount namespace", lambda: (sb.unshare(sb.CLONE_NEWNS | sb.CLONE_NEWCGROUP | sb.CLONE_NEWIPC),
                                     sb.mount(None, "/", None, sb.MS_REC | sb.MS_PRIVATE)))
    step("network namespace (own)", lambda: sb.unshare(sb.CLONE_NEWNET))
    step("loopback up (waits for the kernel's rtnl lock)", sb.loopback_up)
    step("private root", lambda: sb.private_root(tmp, [*view, cwd], empty_dirs=[tmp], proc=False))
    step("private tmp", lambda: sb.mount_tmpfs(tmp, 1 << 20))
    step("landlock ruleset", lambda: sb.landlock_ruleset(sb.landlock_abi(), read=read, write=write,
                                                         write_files=files, filter_tcp=False))
    return times


def phases(cwd: str, runs: int = 10) -> dict[str, float]:
    """Median ms of each sandbox step, in the supervisor's order, each run in a fresh forked child."""
    import json

    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        tmp = tempfile.mkdtemp(prefix="pyagent-bench-sbx-")
        conf = plan(Confinement(), cwd=cwd, exe=shutil.which("true") or "/bin/true", tmp=tmp, extra_write=[])
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            times: dict[str, float] = {}
            try:
                times = _time_steps(tmp, conf, cwd)
            finally:
                os.write(w, json.dumps(times).encode())
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            got = json.loads(f.read() or "{}")
        os.waitpid(pid, 0)
        shutil.rmtree(tmp, ignore_errors=True)
        for name, ms in got.items():
            samples.setdefault(name, []).append(ms)
    return {name: statistics.median(v) for name, v in samples.items()}


def _load(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in avg)


def row(label: str, confined: float, plain: float) -> str:
    return f"{label:46} {confined:9.1f} ms {plain:9.1f} ms {confined - plain:+9.1f} ms  x{confined / plain:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--gate-runs", type=int, default=5)
    args = ap.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pyagent-bench-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        project = Path(tmp) / "project"
        (project / "tests").mkdir(parents=True)
        (project / "mod.py").write_text("def add(a, b):\n    return a + b\n")
        (project / "tests" / "test_mod.py").write_text(
            "from mod import add\n\ndef test_add():\n    assert add(1, 2) == 3\n\n"
            "def test_tmp(tmp_path):\n    (tmp_path / 'x').write_text('y')\n"
        )
        (project / "pyproject.toml").write_text("[tool.pytest.ini_options]\npythonpath = ['.']\n")
        results = [
            ("pyagent exec -- true (CLI)", *paired(cli([], str(work)), cli(["--no-sandbox"], str(work)), args.runs)),
            ("SecureShell.run(['true'])", *paired(in_process(Confinement(), str(work)),
                                                  in_process(Confinement.off(), str(work)), args.runs)),
            ("gate run (pytest, 2 tests)", *paired(gate(Confinement(), project), gate(Confinement.off(), project),
                                                   args.gate_runs)),
        ]
    print(f"{'per run':46} {'confined':>12} {'unconfined':>12} {'overhead':>12}")
    for label, confined, plain in results:
        print(row(f"{label}, wall (median)", confined.wall, plain.wall))
        print(row(f"{label}, wall (best run)", confined.wall_min, plain.wall_min))
        print(row(f"{label}, CPU (median)", confined.cpu, plain.cpu))
    steps = phases(str(Path(tempfile.gettempdir())))
    print("where the confined side's time goes (median ms per step, kernel work in a forked child):")
    for name, ms in steps.items():
        print(f"  {name:50} {ms:7.2f} ms")
    print(f"  {'total of the steps':50} {sum(steps.values()):7.2f} ms")
    load_end = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs; load average (1, 5, 15 min) {_load(load_start)} at the start, "
          f"{_load(load_end)} at the end")
    cmd = results[0]
    wall, best, cpu = cmd[1].wall - cmd[2].wall, cmd[1].wall_min - cmd[2].wall_min, cmd[1].cpu - cmd[2].cpu
    verdict = "met" if wall < TARGET_MS else "NOT met"
    print(f"target: confinement adds < {TARGET_MS:.0f} ms per command (`pyagent exec -- true`, median wall): "
          f"{verdict} (median wall {wall:+.1f} ms, best run {best:+.1f} ms, CPU {cpu:+.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
