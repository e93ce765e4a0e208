"""Speed of ``pyagent audit`` against ruff (C901 only) and radon (cc, mi) on one corpus, in one run.

Default corpus: a copy of this interpreter's standard library without ``test/`` and
``site-packages/`` (``--corpus DIR`` for another tree). Every tool runs as a fresh process from
inside the corpus with its output sent to a file, ruff without its cache. Prints wall times (best
of ``--repeat`` for the fast tools), ratios, pyagent's per-file p50/p99 time (the seed's claim:
p99 < 5 ms), the peak memory (max RSS) of each process, and PyAgent's start-up time.

Targets: the full audit (all metrics) within 2x of ruff's C901-only wall time, and at least 10x
faster than ``radon cc``.

    python benchmarks/audit_vs_peers.py [--corpus DIR] [--repeat N] [--skip-radon-mi]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from agreement import tool
from corpus import stdlib_copy


def timed(cmd: Sequence[str], cwd: Path, out: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MiB, CPU seconds user+system) of one run of ``cmd``, stdout to ``out``."""
    with open(out, "wb") as fh:
        start = time.perf_counter()
        pid = _spawn(cmd, cwd, fh.fileno())
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed with status {status}")
    return wall, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime


def _spawn(cmd: Sequence[str], cwd: Path, stdout_fd: int) -> int:
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.chdir(cwd)
            os.dup2(stdout_fd, 1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.execv(cmd[0], list(cmd))
        finally:
            os._exit(127)
    return pid


def startup(cmd: Sequence[str], n: int = 10) -> float:
    """Median wall time of ``cmd`` (a start-up probe), in milliseconds."""
    samples = []
    for _ in range(n):
        with open(os.devnull, "wb") as null:
            start = time.perf_counter()
            pid = _spawn(cmd, Path(tempfile.gettempdir()), null.fileno())
            os.waitpid(pid, 0)
            samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="tree to audit (default: a copy of the stdlib)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of ruff and pyagent, best is kept (default 5)")
    parser.add_argument("--skip-radon-mi", action="store_true", help="skip radon mi (about 10 minutes)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pyagent-bench-") as tmp:
        corpus = (args.corpus or stdlib_copy(Path(tmp) / "stdlib")).resolve()
        out = Path(tmp) / "out"
        py_files = list(corpus.rglob("*.py"))
        lines = sum(len(p.read_bytes().splitlines()) for p in py_files)
        print(f"corpus: {corpus}: {len(py_files)} .py files, {lines} lines; {os.cpu_count()} CPUs")
        print(f"load average before: {os.getloadavg()[0]:.2f}\n")

        ruff_cmd = [
            tool("ruff"), "check", "--isolated", "--no-cache", "--select", "C901",
            "--config", "lint.mccabe.max-complexity=0", "--output-format", "json", "--exit-zero", ".",
        ]  # fmt: skip
        # The console script, as users run it (``python -m`` would put the corpus, a stdlib copy, first
        # on sys.path and import uncompiled copies of the stdlib from it).
        pyagent_cmd = [tool("pyagent"), "audit", "--format", "json", "."]
        # Warm the page cache and the interpreter's bytecode cache once before timing.
        timed(pyagent_cmd, corpus, out)
        timed(ruff_cmd, corpus, out)

        # Interleave the fast tools so a change in machine load hits both alike.
        ruff_runs_t, pa_runs_t = [], []
        for _ in range(args.repeat):
            ruff_runs_t.append(timed(ruff_cmd, corpus, out))
            pa_runs_t.append(timed(pyagent_cmd, corpus, out))
        summary = json.loads(out.read_text())["summary"]
        ruff_wall, ruff_mem, ruff_cpu = min(r[0] for r in ruff_runs_t), max(r[1] for r in ruff_runs_t), min(r[2] for r in ruff_runs_t)
        pa_wall, pa_mem, pa_cpu = min(r[0] for r in pa_runs_t), max(r[1] for r in pa_runs_t), min(r[2] for r in pa_runs_t)
        cc_wall, cc_mem, cc_cpu = timed([tool("radon"), "cc", "-j", "."], corpus, out)
        mi: tuple[float, float, float] | None = None
        if not args.skip_radon_mi:
            mi = timed([tool("radon"), "mi", "-j", "."], corpus, out)

        rows = [
            ("ruff check --select C901", ruff_wall, ruff_cpu, ruff_mem, [r[0] for r in ruff_runs_t]),
            ("pyagent audit --format json", pa_wall, pa_cpu, pa_mem, [r[0] for r in pa_runs_t]),
            ("radon cc -j", cc_wall, cc_cpu, cc_mem, [cc_wall]),
        ]
        if mi:
            rows.append(("radon mi -j", mi[0], mi[2], mi[1], [mi[0]]))
        print(f"{'tool':32} {'wall s':>8} {'CPU s':>7} {'peak MiB':>9}  wall of each run")
        for name, wall, cpu, mem, runs in rows:
            print(f"{name:32} {wall:8.3f} {cpu:7.3f} {mem:9.1f}  {', '.join(f'{r:.3f}' for r in runs)}")

        t = summary["timing"]
        print(
            f"\npyagent per-file time (in-process, parallel workers): p50 {t['p50_file_ms']:.3f} ms, "
            f"p99 {t['p99_file_ms']:.3f} ms, max {t['max_file_ms']:.3f} ms  "
            f"(seed's claim p99 < 5 ms: {'met' if t['p99_file_ms'] < 5 else 'NOT met'})"
        )
        ratio_ruff = pa_wall / ruff_wall
        ratio_cc = cc_wall / pa_wall
        print(f"pyagent / ruff C901 wall: {ratio_ruff:.2f}x  (target <= 2x: {'met' if ratio_ruff <= 2 else 'NOT met'})")
        print(f"radon cc / pyagent wall:  {ratio_cc:.1f}x  (target >= 10x: {'met' if ratio_cc >= 10 else 'NOT met'})")
        print(f"CPU time ratios (insensitive to machine load): pyagent / ruff {pa_cpu / ruff_cpu:.2f}x, "
              f"radon cc / pyagent {cc_cpu / pa_cpu:.1f}x")
        if mi:
            print(f"radon mi / pyagent wall:  {mi[0] / pa_wall:.0f}x")

        print("\nstart-up (median of 10):")
        base = startup([sys.executable, "-c", "pass"])
        imp = startup([sys.executable, "-c", "import pyagent"])
        helps = startup([tool("pyagent"), "--help"])
        print(f"  python -c pass           {base:6.1f} ms")
        print(f"  python -c 'import pyagent' {imp:6.1f} ms  (+{imp - base:.1f} ms)")
        print(f"  pyagent --help           {helps:6.1f} ms  (+{helps - base:.1f} ms)")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
        ok = ratio_ruff <= 2 and ratio_cc >= 10
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
