"""Killed at any moment, never mixed: SIGKILL ``pyagent replace --yes`` at random moments over a copy of
the whole standard library (>= 50 trials), then ``pyagent recover``; every trial must be byte-identical to
the whole before-state or the whole after-state. The same for a Python-API StateTransaction over 100 files.

Half the kill times are uniform over the whole run, half uniform over the apply phase (estimated from a
timed preview run), so commits are cut mid-way. Run: ``python benchmarks/crash_replace.py [--trials N]``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corpus import count_py, stdlib_copy

PATTERN, REPLACEMENT = r"\bself\b", "this"

API_CHILD = r"""
import sys
from pyagent.state import StateTransaction
root = sys.argv[1]
with StateTransaction(root) as tx:
    for i in range(100):
        name = f"f{i:03d}.py"
        if i % 10 == 0:
            tx.delete(name)
        else:
            tx.write_bytes(name, tx.read_bytes(name).replace(b"before", b"after") * 3)
    for i in range(5):
        tx.create(f"new/pkg{i}/mod.py", b"created = True\n")
"""


def snapshot(root: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".pyagent"]
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        out[rel_dir + "/"] = b""  # directories count too (a rolled-back commit removes the ones it made)
        for name in filenames:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def trials(name: str, pristine: Path, work: Path, cmd: list[str], n: int, t_apply_start: float,
           t_total: float, before: dict[str, bytes], after: dict[str, bytes], seed: int) -> bool:
    env = dict(os.environ, NO_COLOR="1")
    rng = random.Random(seed)
    seen = {"before": 0, "after": 0, "mixed": 0, "killed_mid_run": 0, "hot_journal_rolled_back": 0}
    for trial in range(n):
        tree = work / f"{name}-{trial}"
        shutil.copytree(pristine, tree)
        delay = rng.uniform(0.0, t_total) if trial % 2 else rng.uniform(t_apply_start, t_total * 1.02)
        proc = subprocess.Popen([*cmd, str(tree)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen["killed_mid_run"] += proc.returncode == -signal.SIGKILL
        hot = (tree / ".pyagent" / "vault" / "journal").exists()
        rec = subprocess.run([sys.executable, "-m", "pyagent", "recover", str(tree)], env=env,
                             capture_output=True, text=True)
        if rec.returncode != 0:
            print(f"  trial {trial}: recover failed: {rec.stderr.strip()}")
            seen["mixed"] += 1
            continue
        seen["hot_journal_rolled_back"] += hot
        state = snapshot(tree)
        if state == before:
            seen["before"] += 1
        elif state == after:
            seen["after"] += 1
        else:
            seen["mixed"] += 1
            bad = [k for k in set(before) | set(state) if state.get(k) not in (before.get(k), after.get(k))]
            print(f"  trial {trial}: MIXED after kill at {delay:.3f}s, e.g. {sorted(bad)[:3]}")
        shutil.rmtree(tree)
    ok = seen["mixed"] == 0
    print(f"{name}: {n} trials, run {t_total:.2f}s (apply from ~{t_apply_start:.2f}s): {seen} -> "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


def timed(cmd: list[str]) -> float:
    t = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ, NO_COLOR="1"))
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pyagent-crash-", dir=args.workdir))
    py = sys.executable
    try:
        # 1. pyagent replace --yes over the standard library
        pristine = base / "stdlib"
        n = count_py(stdlib_copy(pristine, with_tests=True))
        before = snapshot(pristine)
        ref = base / "ref"
        shutil.copytree(pristine, ref)
        t_preview = timed([py, "-m", "pyagent", "replace", PATTERN, REPLACEMENT, str(ref)])
        replace = [py, "-m", "pyagent", "replace", "--yes", PATTERN, REPLACEMENT]
        t_total = timed([*replace, str(ref)])
        after = snapshot(ref)
        print(f"stdlib: {n} files; preview {t_preview:.2f}s, replace --yes {t_total:.2f}s")
        ok1 = trials("replace --yes", pristine, base, replace, args.trials, t_preview * 0.8, t_total,
                     before, after, args.seed)

        # 2. a Python-API transaction over 100 files
        api_tree = base / "api"
        api_tree.mkdir()
        for i in range(100):
            (api_tree / f"f{i:03d}.py").write_bytes(f"# file {i} before\n".encode() * (50 + i * 20))
        api_before = snapshot(api_tree)
        api_ref = base / "api-ref"
        shutil.copytree(api_tree, api_ref)
        t_import = timed([py, "-c", "import pyagent.state"])
        t_api = timed([py, "-c", API_CHILD, str(api_ref)])
        api_after = snapshot(api_ref)
        ok2 = trials("python API, 100 files", api_tree, base, [py, "-c", API_CHILD], args.trials,
                     t_import * 0.8, t_api, api_before, api_after, args.seed + 1)
        print("RESULT:", "PASS (every trial whole-before or whole-after)" if ok1 and ok2 else "FAIL")
        if not (ok1 and ok2):
            sys.exit(1)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
