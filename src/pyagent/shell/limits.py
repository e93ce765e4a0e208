"""Resource limits for commands: setrlimit values plus a pids cgroup where the host offers one.

``RLIMIT_NPROC`` counts every process of the user and does not bind root at all, so the process cap is
enforced with a pids cgroup (v1 ``pids`` hierarchy, or v2 where the ``pids`` controller is delegated)
when one can be created, and with ``RLIMIT_NPROC`` = (processes the user already runs + the cap) too.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class ResourceLimits:
    """Per-command limits; None means "not limited". ``processes`` is the number of processes the command
    tree may have at once (cgroup), and the headroom above the user's current count (RLIMIT_NPROC)."""

    cpu_seconds: int | None = None
    address_space: int | None = None  # bytes of virtual memory per process
    file_size: int | None = 1 << 30  # largest file a process may write, bytes
    open_files: int | None = 1024
    processes: int | None = 512

    def rlimits(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        if self.cpu_seconds is not None:
            out.append(("RLIMIT_CPU", int(self.cpu_seconds)))
        if self.address_space is not None:
            out.append(("RLIMIT_AS", int(self.address_space)))
        if self.file_size is not None:
            out.append(("RLIMIT_FSIZE", int(self.file_size)))
        if self.open_files is not None:
            out.append(("RLIMIT_NOFILE", int(self.open_files)))
        if self.processes is not None:
            out.append(("RLIMIT_NPROC", _user_process_count() + int(self.processes)))
        return out


def _user_process_count() -> int:
    uid = os.getuid()
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{name}").st_uid == uid:
                    n += 1
    return n


def _own_cgroup(controller: str) -> tuple[str, str] | None:
    """(hierarchy line's path, 'v1'|'v2') for this process, from /proc/self/cgroup."""
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        lines = f.read().splitlines()
        for line in lines:
            _, ctrls, path = line.split(":", 2)
            if controller in ctrls.split(","):
                return path, "v1"
        for line in lines:
            if line.startswith("0::"):
                return line[3:], "v2"
    return None


@lru_cache(maxsize=1)
def pids_cgroup_base() -> str | None:
    """A directory under which this process may create pids cgroups, or None."""
    found = _own_cgroup("pids")
    if found is None:
        return None
    path, kind = found
    if kind == "v1":
        base = os.path.join("/sys/fs/cgroup/pids", path.lstrip("/"))
    else:
        mount = "/sys/fs/cgroup" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/unified"
        base = os.path.join(mount, path.lstrip("/"))
        try:
            with open(os.path.join(base, "cgroup.subtree_control")) as f:
                if "pids" not in f.read().split():
                    return None
        except OSError:
            return None
    probe = os.path.join(base, f"pyagent-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        os.mkdir(probe)
        ok = os.path.exists(os.path.join(probe, "pids.max"))
        os.rmdir(probe)
    except OSError:
        return None
    return base if ok else None


def create_pids_cgroup(max_pids: int) -> str | None:
    base = pids_cgroup_base()
    if base is None:
        return None
    _remove_stale(base)
    path = os.path.join(base, f"pyagent-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(path)
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(max_pids))
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(path)
        return None
    return path


def remove_cgroup(path: str, wait: float = 2.0) -> None:
    """Removes an emptied cgroup (the kernel refuses while exiting processes still count)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _remove_stale(base: str) -> None:
    """Cgroups left by PyAgent processes that died without cleaning up."""
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            if name.startswith("pyagent-") and not name.startswith("pyagent-probe"):
                owner = name.split("-")[1]
                if owner.isdigit() and int(owner) != os.getpid() and not os.path.exists(f"/proc/{owner}"):
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(base, name))
