"""What "sandboxed" means for a SecureShell command, and what this machine can actually enforce.

A :class:`Confinement` is the policy (on by default on Linux): what the command may read and write, whether
it may reach the network, its memory and tmp caps, and whether a missing layer refuses the run. The
supervisor (:mod:`pyagent.shell._supervisor`) sets the layers up and reports each one; ``protections``
turns that report into the table ``pyagent exec --explain`` and ``pyagent doctor`` print, so a machine
without (say) user namespaces says so instead of pretending.

Reads are restricted too (stricter than Codex's Landlock policy, which only restricts writes): system
paths, ``/etc`` minus its secret stores, the interpreter and its site-packages (including editable
installs), the command itself and the copy. The user's home, ``~/.config`` and anything planted
elsewhere stay unreadable.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import re
import site
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_supervisor.py")
DEFAULT_TIMEOUT = 600.0  # seconds; a command never runs without a deadline
DEFAULT_MEMORY = 1 << 30  # bytes for the whole tree (cgroup) or per process (RLIMIT_AS fallback)
DEFAULT_TMP_SIZE = 128 << 20  # bytes of private tmp (tmpfs)
SYSTEM_READ = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sys")
# /dev: only these are granted (read), in the private root only they exist (pyagent.shell._sandbox.minimal_dev);
# without a private root Landlock still keeps the rest of the host's /dev (disks, /dev/kmsg) unreadable.
DEV_READ = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/pts",
            "/dev/ptmx")
DEV_WRITE = ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/pts", "/dev/ptmx")
DEV_SHM = "/dev/shm"  # a private tmpfs in the sandbox: writable like the private tmp (POSIX semaphores)
# Secret stores inside /etc: not granted even though the rest of /etc is readable.
ETC_SECRETS = frozenset({"shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssh",
                         "ssl/private", "security/opasswd", "krb5.keytab", "machine-id"})
# The layers the supervisor reports, in table order ("full set" for --require-sandbox).
NAMESPACE_LAYERS = ("user namespace", "pid namespace", "mount namespace", "private root", "private /proc",
                    "network namespace", "landlock", "private tmp", ".git read-only")


class SandboxUnavailableError(RuntimeError):
    """``require`` was set and this machine cannot set up every protection (nothing was run)."""


@dataclass(frozen=True)
class Confinement:
    """Policy for one shell. ``read_paths``/``write_paths`` add to the defaults (system + interpreter
    readable; the command's cwd and private tmp writable). ``freezer``: how preemption stops the tree,
    "auto" = a cgroup v2 freezer where one can be created, else SIGSTOP of every process of the tree."""

    enabled: bool = True
    allow_network: bool = False
    memory: int | None = DEFAULT_MEMORY
    tmp_size: int = DEFAULT_TMP_SIZE
    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()
    require: bool = False
    freezer: Literal["auto", "cgroup", "signal"] = "auto"

    @classmethod
    def default(cls) -> Confinement:
        """On where the kernel can do it (Linux); elsewhere off, and ``--explain`` says so."""
        return cls(enabled=sys.platform == "linux")

    @classmethod
    def off(cls) -> Confinement:
        """For PyAgent's own trusted commands (git on the user's repository), never for project code."""
        return cls(enabled=False)


@dataclass(frozen=True)
class Protection:
    """One row of the sandbox table: is it active for this command, and how (or why not)."""

    name: str
    active: bool
    detail: str
    required: bool = field(default=True, compare=False)


_holder: subprocess.Popen[bytes] | None = None
_holder_failed = False
_holder_asked = 0
_holder_lock = threading.Lock()


def namespace_holder() -> int | None:
    """Pid of this process's namespace holder (a user namespace with an empty network namespace that
    confined commands join instead of making their own), or None where it cannot be. Started at the
    second confined command (a one-shot ``pyagent exec`` would only pay for it). Commands of one PyAgent
    process share that loopback; nothing reaches the host's network."""
    global _holder, _holder_failed, _holder_asked
    if sys.platform != "linux":
        return None
    with _holder_lock:
        if _holder is not None and _holder.poll() is None:
            return _holder.pid
        _holder_asked += 1
        if _holder_failed or _holder_asked < 2:
            return None
        proc = subprocess.Popen([sys.executable, "-I", "-S", SUPERVISOR, "--hold"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                                env={"PATH": "/usr/bin:/bin"})
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ok":
            _holder_failed = True
            proc.kill()
            proc.wait()
            return None
        if _holder is None:
            atexit.register(_stop_holder)
        _holder = proc
        return proc.pid


def _stop_holder() -> None:
    if _holder is not None:
        with contextlib.suppress(OSError):
            if _holder.stdin is not None:
                _holder.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            _holder.wait(1.0)


def _is_home_or_above(path: str) -> bool:
    home = os.path.realpath(os.path.expanduser("~"))
    real = os.path.realpath(path)
    return real == "/" or home == real or home.startswith(real.rstrip("/") + "/")


@functools.lru_cache(maxsize=1)
def interpreter_paths() -> tuple[str, ...]:
    """What Python needs to run our and the project's code: prefixes, site-packages and editable
    installs' source directories (from .pth files). Never the home directory itself or above it."""
    found: list[str] = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                        os.path.dirname(os.path.realpath(sys.executable))]
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    found += sites
    for sp in sites:
        try:
            names = [n for n in os.listdir(sp) if n.endswith(".pth")]
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(sp, name), encoding="utf-8", errors="replace") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            found += [ln.strip() for ln in lines if ln.strip().startswith("/") and os.path.isdir(ln.strip())]
    out: list[str] = []
    for path in found:
        if path and os.path.exists(path) and not _is_home_or_above(path) and path not in out:
            out.append(path)
    return tuple(out)


@functools.lru_cache(maxsize=1)
def etc_paths() -> tuple[str, ...]:
    """Every entry of /etc except the secret stores (one level down where a secret is nested)."""
    return tuple(_entries_without("/etc", ETC_SECRETS))


def _entries_without(root: str, secrets: Iterable[str]) -> list[str]:
    secret_set = set(secrets)
    nested = {s.split("/", 1)[0]: s.split("/", 1)[1] for s in secret_set if "/" in s}
    out: list[str] = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for name in names:
        if name in secret_set:
            continue
        full = os.path.join(root, name)
        if name in nested and os.path.isdir(full):
            out += _entries_without(full, {nested[name]})
        else:
            out.append(full)
    return out


def plan(policy: Confinement, *, cwd: str, exe: str, tmp: str, extra_write: Sequence[str]) -> dict[str, Any]:
    """The ``confine`` section of the supervisor's config for one command."""
    write = [cwd, tmp, *policy.write_paths, *extra_write]
    read = [*SYSTEM_READ, *DEV_READ, *etc_paths(), *interpreter_paths(), *policy.read_paths, os.path.realpath(exe)]
    git = os.path.join(cwd, ".git")
    view = [p for p in SYSTEM_READ if p != "/proc"] + ["/dev", "/etc", *interpreter_paths(), *policy.read_paths,
                                                      os.path.realpath(exe)]
    return {
        "network": policy.allow_network, "tmp": tmp, "tmp_size": int(policy.tmp_size),
        "read": read, "view": view, "write": write, "write_files": list(DEV_WRITE),
        "readonly": [git] if os.path.isdir(git) else [], "require": policy.require,
        "holder": None if policy.allow_network else namespace_holder(),
    }


def protections(policy: Confinement, layers: Mapping[str, str], *, memory: str | None, pids: str | None,
                freezer: str, timeout: float) -> tuple[Protection, ...]:
    """The table for one command from the supervisor's layer report and what the parent set up."""
    if not policy.enabled:
        why = "confinement is off for this shell" if sys.platform == "linux" else f"not supported on {sys.platform}"
        rows = [Protection(name, False, why) for name in NAMESPACE_LAYERS]
    else:
        rows = []
        for name in NAMESPACE_LAYERS:
            detail = layers.get(name, "not reported")
            if name == "network namespace" and policy.allow_network:
                rows.append(Protection(name, False, "off: network allowed for this command", required=False))
                continue
            rows.append(Protection(name, detail == "ok" or detail.startswith("ok "), detail))
    confined_ok = policy.enabled and layers.get("user namespace") == "ok"
    rows.append(Protection("capabilities dropped", confined_ok,
                           "empty bounding set, no host capability" if confined_ok else "needs the user namespace"))
    rows.append(Protection("no_new_privs", policy.enabled, "set before exec" if policy.enabled else "off"))
    if memory:
        rows.append(Protection("memory cap", True, memory))
    else:
        rows.append(Protection("memory cap", False, "no memory limit set"))
    rows.append(Protection("process cap", pids is not None, pids or "no pids cgroup (RLIMIT_NPROC only)",
                           required=False))
    rows.append(Protection("freezer", True, freezer, required=False))
    rows.append(Protection("timeout", True, f"{timeout:g} s"))
    dumpable = _dumpable()
    rows.append(Protection("pyagent non-dumpable", dumpable == 0,
                           "its /proc/PID/environ and mem are closed to same-uid processes" if dumpable == 0
                           else "this process is dumpable", required=False))
    return tuple(rows)


def missing(rows: Iterable[Protection]) -> list[Protection]:
    return [r for r in rows if r.required and not r.active]


def make_nondumpable() -> bool:
    """PR_SET_DUMPABLE 0 for this process: its environ (API keys) and memory stay closed to same-uid
    processes without CAP_SYS_PTRACE, even where namespaces are missing. Returns whether it worked."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(4, 0, 0, 0, 0)) == 0  # PR_SET_DUMPABLE


def _dumpable() -> int:
    if sys.platform != "linux":
        return 1
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE


def describe(rows: Iterable[Protection]) -> str:
    """One line for reports: what the sandbox enforced for a command (only the active layers)."""
    on = {r.name for r in rows if r.active}
    if "landlock" not in on and "user namespace" not in on:
        return "sandbox: off (the command ran unconfined)"
    parts = []
    if "network namespace" in on:
        parts.append("network off (a private loopback only)")
    if "landlock" in on:
        parts.append("writes limited to the copy and a private tmp, reads to system and interpreter paths")
    if "private root" in on:
        parts.append("nothing else of the file system visible (UNIX sockets outside the copy included)")
    if ".git read-only" in on:
        parts.append(".git read-only")
    return "sandbox: " + "; ".join(parts)


# How Python (and most C programs through strerror) print a refused call: errno, message, path.
_REFUSAL = re.compile(r"\[Errno (13|1|30|101|111)\] ([A-Za-z -]+)(?:: '([^'\n]{1,300})')?(?=$|[\s,)'\"])", re.M)
_WHO = {"13": "Landlock refused access to {path} (EACCES)",
        "1": "the sandbox refused an operation on {path} (EPERM)",
        "30": "the sandbox's read-only view refused a write to {path} (EROFS)",
        "101": "network off: a connection found no route (ENETUNREACH, network namespace)",
        "111": "a connection was refused (ECONNREFUSED): the network namespace holds no listener of the host"}


def refusals(output: str, rows: Iterable[Protection], *, limit: int = 8) -> tuple[str, ...]:
    """The sandbox's refusals the command *printed* (errors as Python formats them), each named by the
    protection that refuses that errno here. What the kernel does not tell the command's output
    (a refusal swallowed by the program, a path hidden by the private root: plain ENOENT) is not seen;
    Landlock's own audit records need the audit subsystem, which a confined run cannot read."""
    if not any(r.active and r.name in ("landlock", "network namespace", "private root") for r in rows):
        return ()
    found: list[str] = []
    for m in _REFUSAL.finditer(output):
        errno_s, path = m.group(1), m.group(3) or "?"
        if errno_s not in ("101", "111") and path == "?":
            continue
        line = _WHO[errno_s].format(path=path)
        if line not in found:
            found.append(line)
            if len(found) == limit:
                break
    return tuple(found)


def format_table(rows: Iterable[Protection]) -> str:
    lines = []
    for r in rows:
        mark = "yes" if r.active else ("-- " if not r.required else "NO ")
        lines.append(f"  {mark:4} {r.name:22} {r.detail}")
    return "\n".join(lines)
