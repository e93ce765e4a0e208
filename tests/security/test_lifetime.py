"""A grandchild that kills the supervisor and tries to outlive the timeout."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from tests.procfs import pids_with
from tests.security.helpers import active, attack

GRANDCHILD = r"""
import os, signal, sys, time
marker = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(0.3)  # its parent has exited: it is re-parented to whoever reaps orphans
        targets = {os.getppid(), 1}
        for p in os.listdir("/proc"):  # and anything that looks like PyAgent's supervisor
            try:
                args = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0") if p.isdigit() else []
                if any(a.endswith(b"_supervisor.py") for a in args):
                    targets.add(int(p))
            except OSError:
                pass
        results = []
        for target in sorted(targets - {0, os.getpid()}):
            try:
                os.kill(target, signal.SIGKILL)
                results.append(f"{target}:sent")
            except OSError as exc:
                results.append(f"{target}:{exc.errno}")
        with open("kills.txt", "w") as f:
            f.write(" ".join(results))
        os.execv(sys.executable, [marker, "-c",
                 "import time\nwhile True:\n open('beat.txt','a').write('x'); time.sleep(0.05)"])
    os._exit(0)
time.sleep(60)
"""


def test_grandchild_killing_the_supervisor_dies_with_the_tree_pid_namespace(tmp_path: Path) -> None:
    """Protection: pid namespace (the supervisor is invisible; init ignores SIGKILL from inside; when init
    goes, the kernel kills everything left in the namespace)."""
    marker = f"pyagent-grandchild-{uuid.uuid4().hex}"
    start = time.monotonic()
    res = attack(f"import sys; sys.argv[1:] = [{marker!r}]\n" + GRANDCHILD, tmp_path, timeout=3.0)
    took = time.monotonic() - start
    assert active(res, "pid namespace")
    assert took < 15, "the run must end at its timeout, not when the grandchild decides"
    assert res.timed_out, "the supervisor survived and enforced the timeout"
    kills = (tmp_path / "kills.txt").read_text()
    assert kills, "the grandchild ran its attack"
    beat = tmp_path / "beat.txt"
    size = beat.stat().st_size if beat.exists() else 0
    time.sleep(0.5)
    assert (beat.stat().st_size if beat.exists() else 0) == size, "the grandchild outlived the run"
    assert pids_with(marker) == []
    assert str(os.getpid()) not in kills.split(":")[0]  # it never could name us
