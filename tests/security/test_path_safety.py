"""Attacks on ``pyagent replace --yes`` (and every StateTransaction commit) through the file system.

1. A directory of the tree is swapped for a symlink to an outside directory while the replace runs,
   repeatedly: before, the commit re-resolved path strings and rewrote the outside files.
   Protection: ``pyagent.state.beneath.RootDir`` — every read, write, rename and unlink goes through
   directory handles opened from the root one component at a time with O_NOFOLLOW (renameat between
   handles); a symlink anywhere on the way is refused.
2. One file name that is not UTF-8 made every replace on the tree fail with a false "changed on disk"
   conflict. Protection: the Rust core returns paths as OS strings and the transaction keeps them as
   bytes, so the file is read, checked and replaced under its real name.
3. The disk fills up while the journal (or a new file) is written: before, a traceback and a 2 MB
   ``journal.tmp`` left behind. Protection: ``write_journal`` and ``RootDir.write_many_new`` remove what
   they created on failure, the commit rolls back, and the CLI prints one error line.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

N_FILES = 3000


def _replace(root: Path, pattern: str, repl: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyagent", "replace", pattern, repl, str(root), "--yes"],
        capture_output=True, text=True, timeout=300, **kw,  # type: ignore[call-overload]
    )


def _tree_state(top: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``top`` (PyAgent's own .pyagent/ aside) with its bytes and mtime."""
    out = {}
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if x != ".pyagent"]
        for f in files:
            p = Path(d, f)
            out[os.path.relpath(p, top)] = (p.read_bytes(), os.lstat(p).st_mtime_ns)
    return out


@pytest.mark.slow
def test_directory_swapped_for_a_symlink_during_replace_never_writes_outside(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    for top in (root / "d", outside / "d"):
        top.mkdir(parents=True)
        for i in range(N_FILES):  # identical bytes outside: base hashes match, only the path check can stop it
            (top / f"f{i:04d}.py").write_text(f"VALUE_{i} = 'OLD'\n")
    before = _tree_state(outside)
    for round_ in range(3):
        stop = threading.Event()
        swaps = 0
        shutil.rmtree(root / ".pyagent", ignore_errors=True)
        for i in range(N_FILES):  # each round starts from bytes identical to the outside copies
            (root / "d" / f"f{i:04d}.py").write_text(f"VALUE_{i} = 'OLD'\n")

        def swapper(delay: float, stop: threading.Event) -> None:
            nonlocal swaps
            link, real = root / "d", root / "d.real"
            while not (root / ".pyagent" / "lock").exists():  # planning done: the transaction has begun
                if stop.is_set():
                    return
                time.sleep(0.0002)
            while not stop.is_set():
                os.rename(link, real)
                os.symlink(outside / "d", link)
                swaps += 1
                time.sleep(delay)
                os.unlink(link)
                os.rename(real, link)
                time.sleep(delay)

        proc = subprocess.Popen(
            [sys.executable, "-m", "pyagent", "replace", "OLD", f"NEW{round_}", str(root), "--yes"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        thread = threading.Thread(target=swapper, args=(0.0005 * (round_ + 1), stop))
        thread.start()
        try:
            _, err = proc.communicate(timeout=300)
        finally:
            stop.set()
            thread.join()
        assert swaps > 0
        assert "Traceback" not in err, err
        assert _tree_state(outside) == before, f"round {round_}: a file outside the root was written"
        assert not (root / "d").is_symlink()
        inside = {(root / "d" / f"f{i:04d}.py").read_text() for i in range(N_FILES)}
        if proc.returncode == 0:  # the commit held the real directory's handle: every write landed inside
            assert inside == {f"VALUE_{i} = 'NEW{round_}'\n" for i in range(N_FILES)}
        else:  # it met the link (or the directory gone for a moment) and refused: one line, all rolled back
            assert inside == {f"VALUE_{i} = 'OLD'\n" for i in range(N_FILES)}
            assert "symlink" in err or "changed on disk" in err, err
            assert len(err.strip().splitlines()) == 1, err


def test_a_file_name_that_is_not_utf8_is_replaced_not_a_false_conflict(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    odd = os.path.join(os.fsencode(root), b"caf\xe9.py")  # Latin-1 e-acute: not valid UTF-8
    with open(odd, "wb") as f:
        f.write(b"name = 'OLD'\n")
    (root / "plain.py").write_text("other = 'OLD'\n")
    out = _replace(root, "OLD", "NEW")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "changed on disk" not in out.stderr
    with open(odd, "rb") as f:
        assert f.read() == b"name = 'NEW'\n"
    assert (root / "plain.py").read_text() == "other = 'NEW'\n"


@contextlib.contextmanager
def _small_disk(where: Path, size: str) -> Iterator[bool]:
    """A real tmpfs of ``size`` at ``where``; yields False when mounting is not permitted here."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _leftovers(root: Path) -> list[str]:
    return [os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
            if f.endswith(".tmp") or f == "journal"]


@pytest.mark.parametrize("step", ["journal", "new files"])
def test_disk_full_is_one_clear_error_with_nothing_left_behind(tmp_path: Path, step: str) -> None:
    with _small_disk(tmp_path / "disk", "1m") as mounted:
        root = tmp_path / "disk" / "root"
        root.mkdir()
        (root / ".pyagent").mkdir()  # the tree's root: the vault lives on the small disk too
        if step == "journal":  # 12 x 50 KB = 600 KB of originals: the journal cannot fit beside them
            files, pattern, repl = 12, "x", "y"
        else:  # 4 x 50 KB: the journal (200 KB) fits, the 6x larger new contents do not
            files, pattern, repl = 4, "x", "yyyyyy"
        for i in range(files):
            (root / f"m{i}.py").write_text("x" * 50_000 + "\n")
        before = _tree_state(root)
        kw: dict[str, object] = {}
        if not mounted:  # no mount permission: a per-file size limit makes the same writes fail
            limit = 400_000 if step == "journal" else 250_000
            kw["preexec_fn"] = lambda: _limit_file_size(limit)
        out = _replace(root, pattern, repl, **kw)
        assert out.returncode != 0
        assert "Traceback" not in out.stderr, out.stderr
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, out.stderr
        expected = "disk is full" if mounted else "file size limit"
        assert expected in lines[0] and "nothing changed" in lines[0], lines[0]
        if step == "journal":
            assert "journal" in lines[0]
        assert _tree_state(root) == before  # every file as it was
        assert _leftovers(root) == []  # no journal.tmp, no journal, no staged temp files
