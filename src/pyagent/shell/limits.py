"""Resource limits for commands: setrlimit values plus cgroups where the host offers them.

``RLIMIT_NPROC`` counts every process of the user and does not bind root at all, so the process cap is
enforced with a pids cgroup (v1 ``pids`` hierarchy, or v2 where the ``pids`` controller is delegated)
when one can be created, and with ``RLIMIT_NPROC`` = (processes the user already runs + the cap) too.
The memory cap of a confined command is a memory cgroup (v2 ``memory.max`` or v1
``memory.limit_in_bytes``) where one is writable, else ``RLIMIT_AS``; the freezer (preemption) is a
v2 cgroup of its own (``cgroup.freeze`` needs no controller).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from functools import cache


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
    """(hierarchy line's path, 'v1'|'v2') for this process, from /proc/self/cgroup (v1 first)."""
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


def _own_v2_cgroup() -> str | None:
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return None


def _v2_mount() -> str | None:
    for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.exists(os.path.join(mount, "cgroup.controllers")):
            return mount
    return None


@cache
def cgroup_base(controller: str, probe_file: str) -> str | None:
    """A directory under which this process may create cgroups offering ``probe_file``, or None.
    ``controller`` "" asks for a plain v2 cgroup (the freezer needs no controller)."""
    found = _own_cgroup(controller) if controller else None
    if controller and found is None:
        return None
    if found is not None and found[1] == "v1":
        base = os.path.join("/sys/fs/cgroup", controller, found[0].lstrip("/"))
    else:
        mount = _v2_mount()
        own = _own_v2_cgroup()
        if mount is None or own is None:
            return None
        base = os.path.join(mount, own.lstrip("/"))
        if controller:
            try:
                with open(os.path.join(base, "cgroup.subtree_control")) as f:
                    if controller not in f.read().split():
                        return None
            except OSError:
                return None
    probe = os.path.join(base, f"pyagent-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        os.mkdir(probe)
        ok = os.path.exists(os.path.join(probe, probe_file))
        os.rmdir(probe)
    except OSError:
        return None
    return base if ok else None


def pids_cgroup_base() -> str | None:
    return cgroup_base("pids", "pids.max")


def create_cgroup(base: str | None, settings: dict[str, str] | None = None) -> str | None:
    """A fresh cgroup under ``base`` with ``settings`` written (file name -> value), or None."""
    if base is None:
        return None
    _remove_stale(base)
    path = os.path.join(base, f"pyagent-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(path)
        for name, value in (settings or {}).items():
            with open(os.path.join(path, name), "w") as f:
                f.write(value)
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(path)
        return None
    return path


def create_pids_cgroup(max_pids: int) -> str | None:
    return create_cgroup(pids_cgroup_base(), {"pids.max": str(max_pids)})


def memory_cgroup_base() -> tuple[str, str] | None:
    """(base, limit file) for memory cgroups: v2 ``memory.max`` or v1 ``memory.limit_in_bytes``."""
    for probe in ("memory.max", "memory.limit_in_bytes"):
        base = cgroup_base("memory", probe)
        if base is not None:
            return base, probe
    return None


def create_memory_cgroup(limit: int) -> str | None:
    found = memory_cgroup_base()
    if found is None:
        return None
    base, limit_file = found
    settings = {limit_file: str(limit)}
    if limit_file == "memory.max" and os.path.exists(os.path.join(base, "memory.swap.max")):
        settings["memory.swap.max"] = "0"
    return create_cgroup(base, settings)


def freezer_cgroup_base() -> str | None:
    return cgroup_base("", "cgroup.freeze")


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
