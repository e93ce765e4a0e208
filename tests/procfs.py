"""What /proc says about processes the tests start: found by a marker in their command line, and
whether they are stopped (SIGSTOP: state ``T``) or frozen by the cgroup v2 freezer."""

from __future__ import annotations

import os


def stat(pid: int) -> tuple[str, int]:
    """The process's state letter and its parent's pid."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def pids_with(marker: str) -> list[int]:
    """Every process (host view) whose command line contains ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


def cgroup_frozen(pid: int) -> bool:
    """The process's cgroup (v2) reports ``frozen 1``."""
    with open(f"/proc/{pid}/cgroup") as f:
        path = next(line[3:].strip() for line in f if line.startswith("0::"))
    mount = "/sys/fs/cgroup" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/unified"
    try:
        with open(os.path.join(mount, path.lstrip("/"), "cgroup.events")) as f:
            return "frozen 1" in f.read()
    except OSError:
        return False


def stopped(pid: int) -> bool:
    """Not running and not able to: stopped by a signal, or in a frozen cgroup."""
    return stat(pid)[0] == "T" or cgroup_frozen(pid)
