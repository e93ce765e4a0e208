"""Killed at any moment, never mixed: `pyagent replace --yes` SIGKILLed at random over a real tree.

The tree is 150 files of the standard library (the whole library is used by benchmarks/crash_replace.py,
with >= 50 trials); here 20 trials keep the suite fast. Half the kill times are spread over the whole
run, half over the apply phase (estimated from a timed preview run), so commits are really cut mid-way.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

PATTERN, REPLACEMENT = r"\bself\b", "this"
N_FILES, TRIALS = 150, 20


def copy_stdlib_subset(dest: Path, n: int) -> None:
    src = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in src.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    step = max(1, len(files) // n)
    for p in files[::step][:n]:
        target = dest / p.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)


def snapshot(root: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".pyagent"]
        for name in filenames:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def test_replace_killed_at_random_is_all_or_nothing(tmp_path: Path, pyagent_cmd: list[str],
                                                   clean_env: dict[str, str]) -> None:
    pristine = tmp_path / "pristine"
    copy_stdlib_subset(pristine, N_FILES)
    before = snapshot(pristine)
    replace = [*pyagent_cmd, "replace", "--yes", PATTERN, REPLACEMENT]

    ref = tmp_path / "ref"
    shutil.copytree(pristine, ref)
    t0 = time.monotonic()
    subprocess.run([*pyagent_cmd, "replace", "--color", "never", PATTERN, REPLACEMENT, str(ref)],
                   env=clean_env, check=True, capture_output=True)
    t_preview = time.monotonic() - t0
    t0 = time.monotonic()
    done = subprocess.run([*replace, str(ref)], env=clean_env, capture_output=True, text=True)
    t_total = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    after = snapshot(ref)
    assert after != before and len(after) == len(before)

    rng = random.Random(20261125)
    seen = {"before": 0, "after": 0, "killed": 0, "hot_journal": 0}
    for trial in range(TRIALS):
        tree = tmp_path / f"t{trial}"
        shutil.copytree(pristine, tree)
        low = 0.0 if trial % 2 else t_preview * 0.8  # odd: whole run; even: the apply phase
        delay = rng.uniform(low, t_total * 1.02)
        proc = subprocess.Popen([*replace, str(tree)], env=clean_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen["killed"] += proc.returncode == -signal.SIGKILL
        seen["hot_journal"] += (tree / ".pyagent" / "vault" / "journal").exists()
        rec = subprocess.run([*pyagent_cmd, "recover", str(tree)], env=clean_env, capture_output=True, text=True)
        assert rec.returncode == 0, rec.stderr
        state = snapshot(tree)
        if state == before:
            seen["before"] += 1
        elif state == after:
            seen["after"] += 1
        else:
            changed = [k for k in before if state.get(k) != before[k] and state.get(k) != after.get(k)]
            pytest.fail(f"trial {trial} (kill after {delay:.3f}s): mixed state, e.g. {changed[:3]}")
        shutil.rmtree(tree)
    print(f"crash trials: {seen} (preview {t_preview:.2f}s, full run {t_total:.2f}s)")
    assert seen["before"] + seen["after"] == TRIALS
    assert seen["killed"] >= TRIALS // 2  # the kills really landed while the command ran
