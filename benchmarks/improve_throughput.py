"""Verified changes per minute: test-impact selection vs. the full-suite gate, same plan, one run.

Builds a project whose full suite takes at least a minute (``--modules`` modules, each with one test
that takes ``--test-seconds``), every module with a function over the complexity threshold and an
unused import. Two ``improve`` runs on identical git copies, the same options and the same plan:
one with ``--full-tests`` (the anchor: every change runs the whole suite), one with test-impact
selection. Prints verified changes per minute of the task phase and end to end (baseline and final
full suite included), their ratio, whether both kept the same changes, and whether the selection
run's final full suite passed. Target: >= 5x on the task phase.

Run: ``python benchmarks/improve_throughput.py [--modules 30] [--test-seconds 2] [--max-tasks 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pyagent.improve.run import ImproveOptions, RunResult, improve

MODULE = '''\
import os


def score_{n}(a, b, c):
    """Scores a triple; written with needless nesting."""
    if a > 0:
        if b > 0:
            if c > 0:
                return 3
    if a < 0:
        if b < 0:
            return -2
    if c == {n}:
        return {n}
    return 0
'''

TEST = """\
import time

from pkg.m{n:02d} import score_{n}


def test_score_{n}():
    time.sleep({seconds})  # stands in for a slow integration test
    assert score_{n}(1, 1, 1) == 3
    assert score_{n}(-1, -1, 0) == -2
    assert score_{n}(0, 0, {n}) == {n}
    assert score_{n}(0, 0, -5) == 0
"""


def build(root: Path, modules: int, seconds: float) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    for n in range(modules):
        (root / "pkg" / f"m{n:02d}.py").write_text(MODULE.format(n=n))
        (root / "tests" / f"test_m{n:02d}.py").write_text(TEST.format(n=n, seconds=seconds))
    (root / "pyproject.toml").write_text(
        '[project]\nname = "slowsuite"\nversion = "0"\n\n[tool.pytest.ini_options]\npythonpath = ["."]\n'
    )
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "slow suite"], cwd=root, check=True)
    return root


def run(root: Path, *, full: bool, max_tasks: int, concurrency: int) -> RunResult:
    opts = ImproveOptions(
        path=root,
        test_cmd=f"{sys.executable} -m pytest",
        test_env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        max_complexity=4,
        max_tasks=max_tasks,
        concurrency=concurrency,
        full_tests=full,
        test_timeout=900.0,
    )
    return asyncio.run(improve(opts))


def kept(result: RunResult) -> set[tuple[str, str]]:
    return {(t.action, t.target) for t in result.tasks if t.status == "kept"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--modules", type=int, default=30)
    ap.add_argument("--test-seconds", type=float, default=2.0)
    ap.add_argument("--max-tasks", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="pyagent-throughput-"))
    try:
        results: dict[str, RunResult] = {}
        for label, full in (("full-suite gate", True), ("test-impact selection", False)):
            root = build(scratch / label.replace(" ", "-"), args.modules, args.test_seconds)
            results[label] = run(root, full=full, max_tasks=args.max_tasks, concurrency=args.concurrency)
        rates: dict[str, tuple[float, float]] = {}
        for label, res in results.items():
            n = len(kept(res))
            phases = res.phase_seconds
            tasks_min = phases.get("tasks", 0.0) / 60
            total_min = res.duration / 60
            rates[label] = (n / tasks_min if tasks_min else 0.0, n / total_min if total_min else 0.0)
            print(
                f"{label:24s} kept {n:2d}/{len(res.tasks):2d}  baseline {phases.get('baseline', 0):6.1f}s  "
                f"tasks {phases.get('tasks', 0):6.1f}s  final {phases.get('final', 0):6.1f}s  "
                f"total {res.duration:6.1f}s  -> {rates[label][0]:6.2f} changes/min (tasks), "
                f"{rates[label][1]:5.2f} changes/min (end to end)"
            )
        full_res, sel_res = results["full-suite gate"], results["test-impact selection"]
        same_plan = [(t.action, t.target) for t in full_res.tasks] == [
            (t.action, t.target) for t in sel_res.tasks
        ]
        final_ok = sel_res.tests_after is not None and not sel_res.regressions()
        suite = full_res.tests_before.duration if full_res.tests_before else 0.0
        print(
            f"full suite: {suite:.1f}s; same plan: {same_plan}; same kept set: {kept(full_res) == kept(sel_res)}"
        )
        print(f"selection run's final full suite passed: {final_ok}; notes: {sel_res.notes}")
        for i, name in enumerate(("task phase", "end to end")):
            anchor = rates["full-suite gate"][i]
            ratio = rates["test-impact selection"][i] / anchor if anchor else float("inf")
            print(f"ratio ({name}): {ratio:.1f}x" + ("  (target >= 5x)" if i == 0 else ""))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
