"""Bulk replace speed: GNU ``sed -i`` (via xargs) vs a plain Python ``re.sub`` loop vs
``pyagent replace --yes`` (durable: journal + fsyncs included), on a copy of the standard library.

Target: pyagent within 2x of sed. The time pyagent spends making things durable is printed separately.
Second part: committing 1,000 small files in one StateTransaction vs plain writes.
Run: ``python benchmarks/replace_vs_sed.py [--pattern RE --replacement R] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corpus import count_py, stdlib_copy


def warm(root: Path) -> None:
    for p in root.rglob("*.py"):
        p.read_bytes()


def run_sed(root: Path, sed_expr: str) -> float:
    t = time.perf_counter()
    find = subprocess.Popen(["find", str(root), "-name", "*.py", "-print0"], stdout=subprocess.PIPE)
    subprocess.run(["xargs", "-0", "sed", "-i", "-E", sed_expr], stdin=find.stdout, check=True)
    find.wait()
    return time.perf_counter() - t


def run_python(root: Path, pattern: str, replacement: str) -> float:
    t = time.perf_counter()
    rx = re.compile(pattern)
    for p in root.rglob("*.py"):
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = rx.sub(replacement, text)
        if new != text:
            p.write_text(new, encoding="utf-8")
    return time.perf_counter() - t


def run_pyagent(root: Path, pattern: str, replacement: str) -> tuple[float, float, str]:
    env = dict(os.environ, NO_COLOR="1")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pyagent", "replace", "--yes", pattern, replacement, str(root)],
                         capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t
    if out.returncode not in (0, 1):
        raise SystemExit(f"pyagent replace failed: {out.stderr}")
    m = re.search(r"fsync (\d+) ms", out.stdout)
    return elapsed, (int(m.group(1)) / 1000 if m else 0.0), out.stdout.strip()


def same_utf8_content(a: Path, b: Path) -> tuple[int, int]:
    """Files whose contents agree / differ, over the UTF-8 files (pyagent skips the others on purpose)."""
    agree = differ = 0
    for p in a.rglob("*.py"):
        if ".pyagent" in p.parts:
            continue
        data = p.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if data == (b / p.relative_to(a)).read_bytes():
            agree += 1
        else:
            differ += 1
    return agree, differ


def commit_cost(base: Path, n: int = 1000) -> None:
    from pyagent.state import StateTransaction

    plain = base / "plain"
    synced = base / "synced"
    txn = base / "txn"
    for d in (plain, synced, txn):
        for i in range(n):
            (d / f"d{i % 20}").mkdir(parents=True, exist_ok=True)
            (d / f"d{i % 20}" / f"f{i}.py").write_text(f"x = {i}\n")
    payload = [(f"d{i % 20}/f{i}.py", f"x = {i + 1}  # changed\n".encode()) for i in range(n)]

    t = time.perf_counter()
    for rel, data in payload:
        with open(plain / rel, "wb") as f:
            f.write(data)
    t_plain = time.perf_counter() - t

    subprocess.run(["sync"], check=True)
    t = time.perf_counter()
    for rel, data in payload:
        fd = os.open(synced / rel, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
    t_synced = time.perf_counter() - t

    subprocess.run(["sync"], check=True)
    t = time.perf_counter()
    with StateTransaction(txn) as tx:
        for rel, data in payload:
            tx.write_bytes(rel, data)
    t_txn = time.perf_counter() - t
    r = tx.last_result
    print(f"\n{n} small files: plain writes {t_plain * 1000:.1f} ms, write+fsync each {t_synced * 1000:.1f} ms, "
          f"one StateTransaction {t_txn * 1000:.1f} ms (of which durable I/O {r.fsync_seconds * 1000:.1f} ms)")
    print(f"ratio transaction/plain = {t_txn / t_plain:.1f}x, transaction/fsync-each = {t_txn / t_synced:.2f}x")
    print("phases (ms): " + ", ".join(f"{k} {v * 1000:.1f}" for k, v in r.timings.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pattern", default=r"\bself\b")
    ap.add_argument("--replacement", default="this")
    ap.add_argument("--sed", default=r"s/\bself\b/this/g", help="the same replacement as a sed expression")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pyagent-bench-", dir=args.workdir))
    try:
        trees = {name: base / name for name in ("sed", "python", "pyagent")}
        n = count_py(stdlib_copy(trees["sed"], with_tests=True))
        shutil.copytree(trees["sed"], trees["python"])
        shutil.copytree(trees["sed"], trees["pyagent"])
        for t in trees.values():
            warm(t)
        subprocess.run(["sync"], check=True)  # start all three with a clean page cache writeback
        print(f"stdlib copy: {n} .py files under {base}; regex {args.pattern!r} -> {args.replacement!r}")
        # `sync` (untimed) between tools: otherwise pyagent's fsyncs would also pay for writing back the
        # dirty pages sed and the Python loop left behind (ext4 commits them together).
        t_sed = run_sed(trees["sed"], args.sed)
        subprocess.run(["sync"], check=True)
        t_py = run_python(trees["python"], args.pattern, args.replacement)
        subprocess.run(["sync"], check=True)
        t_pa, t_fsync, summary = run_pyagent(trees["pyagent"], args.pattern, args.replacement)
        agree, differ = same_utf8_content(trees["pyagent"], trees["sed"])
        print(f"GNU sed -i via xargs   {t_sed:7.3f} s   (not durable: no fsync)")
        print(f"Python re.sub loop     {t_py:7.3f} s   ({t_py / t_sed:.2f}x sed, not durable)")
        print(f"pyagent replace --yes  {t_pa:7.3f} s   ({t_pa / t_sed:.2f}x sed; journal+fsync {t_fsync:.3f} s of it, "
              f"{t_pa - t_fsync:.3f} s without)")
        print(f"  {summary}")
        print(f"  same result as sed on {agree} UTF-8 files, {differ} differ")
        print(f"RATIO pyagent/sed = {t_pa / t_sed:.2f} (target <= 2.0)")
        commit_cost(base / "commit")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
