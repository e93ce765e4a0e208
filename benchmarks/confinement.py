"""Cost of confinement per command and per gate run, confined beside unconfined, in one run.

* ``pyagent exec -- true``: the real CLI as a subprocess, median of N runs each way (``--no-sandbox`` is
  the unconfined anchor); target: confined - unconfined < 30 ms;
* ``SecureShell.run(["true"])`` in-process (the same, without the CLI's interpreter start);
* one gate run: the product's TestRunner on a two-test pytest project, median of a few runs each way.

Beside the wall-clock medians it prints the CPU time (user + system, this process and its children) per
run: on a shared, loaded machine wall time mostly measures the queue for a core, CPU time what the
sandbox itself costs.

    python benchmarks/confinement.py [--runs 50] [--gate-runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pyagent.agents.testing import TestRunner, discover_tests
from pyagent.shell import Confinement, SecureShell

TARGET_MS = 30.0


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median wall ms, mean CPU ms) per run."""
    fn()  # warm caches (page cache, the shell's path lists)
    times = []
    cpu0 = _cpu()
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, (_cpu() - cpu0) / runs * 1000


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
    runner = TestRunner(command, SecureShell(timeout=120.0, confine=confine), timeout=120.0)

    def go() -> None:
        res = asyncio.run(runner.run(project))
        assert sorted(res.outcomes.values()) == ["passed", "passed"], res

    return go


def row(label: str, confined: float, plain: float) -> str:
    return f"{label:40} {confined:9.1f} ms {plain:9.1f} ms {confined - plain:+9.1f} ms  x{confined / plain:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--gate-runs", type=int, default=5)
    args = ap.parse_args()
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
            ("pyagent exec -- true (CLI)", median_ms(cli([], str(work)), args.runs),
             median_ms(cli(["--no-sandbox"], str(work)), args.runs)),
            ("SecureShell.run(['true'])", median_ms(in_process(Confinement(), str(work)), args.runs),
             median_ms(in_process(Confinement.off(), str(work)), args.runs)),
            ("gate run (pytest, 2 tests)", median_ms(gate(Confinement(), project), args.gate_runs),
             median_ms(gate(Confinement.off(), project), args.gate_runs)),
        ]
    print(f"{'per run':40} {'confined':>12} {'unconfined':>12} {'overhead':>12}")
    for label, confined, plain in results:
        print(row(f"{label}, wall (median)", confined[0], plain[0]))
        print(row(f"{label}, CPU (mean)", confined[1], plain[1]))
    wall = results[0][1][0] - results[0][2][0]
    cpu = results[0][1][1] - results[0][2][1]
    verdict = "met" if wall < TARGET_MS else "NOT met"
    print(f"target: confinement adds < {TARGET_MS:.0f} ms per command: {verdict} "
          f"(wall {wall:+.1f} ms, CPU {cpu:+.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
