"""What one isolated task copy costs: hard links (the old, unsafe anchor: the copy shares inodes with
the user's tree) vs reflink clones (FICLONE) vs plain copies, on a copy of the standard library.

``isolated_copy`` picks reflink where the file system clones between the two trees, else copy; this
prints each method's median time per task copy and its ratio to hard links. Reflink is reported as
unsupported where the file system cannot clone (ext4, tmpfs); pass ``--workdir`` on btrfs/XFS to see it.
The tree also holds what a real checkout has beside its tracked files: a gitignored ``build/`` (generated
files the tests may need: copied) and a virtual environment (``.venv``-style, with ``pyvenv.cfg``: never
copied). The listing lines compare ``project_files`` (what agents may change, gitignore honored: the
listing copies used before) with ``copy_files`` (what copies hold now).
Run: ``python benchmarks/workspace_copy.py [--repeat 5] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from corpus import stdlib_copy

from pyagent.pipeline.workspace import _clone, copy_files, copy_method, isolated_copy, project_files


def tree_copy(root: Path, files: list[str], parent: Path, one: Callable[[Path, Path], None]) -> Path:
    """The loop isolated_copy runs, with ``one`` as the per-file operation (for the anchors)."""
    dest = Path(tempfile.mkdtemp(prefix="bench-ws-", dir=parent))
    made: set[Path] = set()
    for rel in files:
        target = dest / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        one(root / rel, target)
    return dest


def median_time(make: Callable[[], Path], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        ws = make()
        times.append(time.perf_counter() - t)
        shutil.rmtree(ws)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None, help="where the tree and copies live")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-wscopy-", dir=args.workdir))
    try:
        root = stdlib_copy(work / "tree", with_tests=True)
        scratch = work / "scratch"
        scratch.mkdir()
        (root / ".gitignore").write_text("build/\nvenv-dev/\n")
        shutil.copytree(root / "json", root / "build" / "generated")
        shutil.copytree(root / "email", root / "venv-dev" / "lib" / "email")
        (root / "venv-dev" / "pyvenv.cfg").write_text("home = /usr/bin\n")
        for name, lister in (("project_files (before)", project_files), ("copy_files (now)", copy_files)):
            t = time.perf_counter()
            listed = lister(root)
            print(f"listing: {name:24s} {len(listed):5d} files  {(time.perf_counter() - t) * 1000:7.1f} ms")
        before = project_files(root)
        files = copy_files(root)
        size = sum((root / f).stat().st_size for f in files)
        print(f"tree: {len(files)} files, {size / 1e6:.1f} MB in {work} ({os.uname().sysname})")
        chosen = copy_method(root / files[0], scratch)
        results: dict[str, float | None] = {
            "hard link (unsafe anchor)": median_time(
                lambda: tree_copy(root, files, scratch, os.link), args.repeat
            ),
            "plain copy (one file at a time)": median_time(
                lambda: tree_copy(root, files, scratch, shutil.copy2), args.repeat
            ),
            "reflink, FICLONE (one at a time)": median_time(
                lambda: tree_copy(root, files, scratch, _clone), args.repeat
            ) if chosen == "reflink" else None,
            f"isolated_copy, old listing ({chosen})": median_time(
                lambda: isolated_copy(root, parent=scratch, files=before), args.repeat
            ),
            f"isolated_copy, with listing ({chosen})": median_time(
                lambda: isolated_copy(root, parent=scratch), args.repeat
            ),
        }
        anchor = results["hard link (unsafe anchor)"]
        assert anchor is not None
        for name, secs in results.items():
            if secs is None:
                print(f"{name:38s} unsupported on this file system")
            else:
                print(f"{name:38s} {secs * 1000:8.1f} ms per task copy   {secs / anchor:5.2f}x hard link")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
