"""Memory and tmp quotas: a 2 GiB allocation and 200 MB written to TMPDIR."""

from __future__ import annotations

import os
from pathlib import Path

from tests.security.helpers import active, attack


def test_two_gib_allocation_is_stopped_memory_cap(tmp_path: Path) -> None:
    """Protection: memory cap (memory cgroup where writable, else RLIMIT_AS)."""
    res = attack("x = b'x' * (2 << 30)\nprint('ALLOCATED', len(x))", tmp_path)
    assert active(res, "memory cap")
    assert "ALLOCATED" not in res.stdout
    assert res.signal == 9 or "MemoryError" in res.stderr, (res.exit_code, res.stderr[-500:])


def test_200_mb_to_tmpdir_is_stopped_private_tmp(tmp_path: Path) -> None:
    """Protection: private tmp (a size-limited tmpfs of the command's mount namespace)."""
    code = (
        "import os\n"
        "path, n = os.path.join(os.environ['TMPDIR'], 'big'), 0\n"
        "try:\n"
        "    with open(path, 'wb') as f:\n"
        "        for _ in range(200):\n"
        "            f.write(b'x' * (1 << 20)); f.flush(); n += 1\n"
        "    print('WROTE', n)\n"
        "except OSError as exc:\n"
        "    print('STOPPED', exc.errno, n, os.environ['TMPDIR'])\n"
    )
    res = attack(code, tmp_path)
    assert active(res, "private tmp")
    assert res.stdout.startswith("STOPPED 28"), res.stdout + res.stderr  # ENOSPC
    written = int(res.stdout.split()[2])
    assert written < 200 and written <= 128
    tmpdir = res.stdout.split()[3]
    assert not os.path.exists(tmpdir), "the private tmp is gone after the run"
