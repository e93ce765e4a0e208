"""Kernel confinement primitives, by raw syscalls through ctypes (standard library only).

Loaded by the supervisor (``python -I -S``, before any of PyAgent can be imported) and by the parent for
``pyagent doctor``. Why ctypes and not the Rust core: the supervisor is already a Python process that forks
the command, every step here is one syscall (unshare, mount, prctl, landlock_*), and a Rust version would
not be faster (the interpreter start dominates) but would tie the sandbox to a rebuilt extension.

Layers (each one may fail on its own; the caller records which did):

* user namespace: the command keeps its uid but has no capability on the host, even as root;
* PID namespace: the command's init is PID 1; when it exits the kernel kills everything left in it, and
  no other process (PyAgent's included) is visible or signalable;
* mount namespace: a private root (a tmpfs holding bind mounts of only the granted paths, then
  ``pivot_root``), so nothing else of the host's file system exists for the command, its UNIX sockets
  included (ssh-agent, docker.sock: Landlock does not govern ``connect`` on a socket path); a fresh
  /proc of that PID namespace, a size-limited tmpfs as private tmp and /dev/shm, read-only bind mounts
  (``.git``);
* network namespace: only a private loopback (tests may still serve and connect on 127.0.0.1 inside);
* Landlock: reads only system, interpreter and granted paths; writes only the copy and the private tmp;
  TCP bind/connect refused when there is no network namespace; signals to processes outside refused;
* no_new_privs and an empty capability bounding set before exec.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Iterable
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

SYS_LANDLOCK_CREATE_RULESET = 444  # same number on every architecture (generic syscall table)
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FS_V1_ALL = (1 << 13) - 1
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2
FILE_ACCESS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_ACCESS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64))


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def prctl(option: int, arg: int = 0) -> int:
    return _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(_libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data)), f"mount {target}")


def enter_user_namespace() -> None:
    """A new user namespace mapping only our own uid/gid to itself (no host capability survives)."""
    uid, gid = os.getuid(), os.getgid()
    unshare(CLONE_NEWUSER)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def hold_namespaces() -> None:
    """The namespace holder's whole life: a user namespace with an empty network namespace (only lo),
    kept for confined commands to join (creating a network namespace per command costs more than the
    rest of the sandbox together). Prints "ok", then lives until its stdin closes (PyAgent exited)."""
    import sys

    try:
        enter_user_namespace()
        unshare(CLONE_NEWNET)
        loopback_up()
    except OSError as exc:
        sys.stdout.write(f"failed: {exc}\n")
        sys.stdout.flush()
        return
    sys.stdout.write("ok\n")
    sys.stdout.flush()
    while sys.stdin.buffer.read(4096):
        pass


def loopback_up() -> None:
    """Brings up ``lo`` in a fresh network namespace (it starts down). A socket from libc, not the
    ``socket`` module: importing that costs the supervisor ~8 ms of CPU per command, more than the
    network namespace itself (~0.6 ms)."""
    fd = _check(int(_libc.socket(2, 2 | 0o2000000, 0)), "socket(AF_INET, SOCK_DGRAM)")  # SOCK_CLOEXEC
    try:
        flags = struct.unpack("16sh", fcntl.ioctl(fd, 0x8913, struct.pack("16sh", b"lo", 0)))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(fd, 0x8914, struct.pack("16sh", b"lo", flags | 0x1 | 0x40))  # SIOCSIFFLAGS UP|RUNNING
    finally:
        os.close(fd)


def mount_tmpfs(target: str, size: int) -> None:
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0700")


def bind_readonly(path: str) -> None:
    """Read-only bind of ``path`` onto itself, keeping the flags the kernel locks in a user namespace."""
    st = os.statvfs(path).f_flag
    keep = st & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    if st & 4096:  # ST_RELATIME
        keep |= MS_RELATIME
    mount(path, path, None, MS_BIND | MS_REC)
    mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | keep)


MNT_DETACH = 2
# pivot_root has no libc wrapper: its number per architecture (os.uname().machine), from the kernel's
# tables (arch/x86/entry/syscalls, include/uapi/asm-generic/unistd.h). Only x86_64 is exercised by the
# tests here; the others are checked against the installed kernel headers (tests/shell), never run.
PIVOT_ROOT_SYSCALL = {"x86_64": 155, "i386": 217, "i686": 217, "aarch64": 41, "riscv64": 41, "loongarch64": 41}
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def umount(path: str) -> None:
    _check(_libc.umount2(path.encode(), MNT_DETACH), f"umount {path}")


def _view_paths(paths: Iterable[str]) -> list[str]:
    """Granted paths to bind, outermost first, without those a bound parent already holds."""
    out: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths if os.path.lexists(p)}, key=lambda p: (p.count("/"), p)):
        if not any(path == b or path.startswith(b.rstrip("/") + "/") for b in out):
            out.append(path)
    return out


def private_root(staging: str, paths: Iterable[str], *, empty_dirs: Iterable[str], proc: bool) -> list[str]:
    """Builds a root holding only ``paths`` (bind mounts at their own absolute paths; a top-level symlink
    such as merged-usr ``/bin`` is recreated as a symlink) on a tmpfs mounted at ``staging``, then
    pivots into it and covers the old root with an empty read-only tmpfs. ``empty_dirs`` are made in the new root (mount points
    for the caller). ``proc``: mount a fresh /proc (the caller owns a PID namespace), else bind the
    host's. The caller seals the root (:func:`seal_root`) once its own mounts are made. Returns the
    paths bound; raises OSError (the command is not running yet, so nothing half-done is seen)."""
    machine = os.uname().machine  # not platform.machine(): importing platform costs ~5 ms of CPU
    nr = PIVOT_ROOT_SYSCALL.get(machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root syscall number not known for {machine}")
    mount("tmpfs", staging, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    bound: list[str] = []
    for path in _view_paths([*paths, *([] if proc else ["/proc"])]):
        if path == "/":
            raise OSError(errno.EINVAL, "the whole file system is granted: no private root")
        target = staging + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if path == "/dev":
            bound += minimal_dev(target)
            continue
        if os.path.islink(path) and path.count("/") == 1:
            os.symlink(os.readlink(path), target)
            continue
        real = os.path.realpath(path)
        if os.path.isdir(real):
            os.makedirs(target, exist_ok=True)
        else:
            with open(target, "w"):
                pass
        mount(real, target, None, MS_BIND | MS_REC)
        bound.append(path)
    for path in [*empty_dirs, "/proc"]:
        os.makedirs(staging + os.path.normpath(path), exist_ok=True)
    if proc:  # before the old root goes: the kernel mounts a new proc only beside a fully visible one
        mount("proc", staging + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    old = staging + "/.oldroot"
    os.mkdir(old)
    os.chdir(staging)
    _check(int(_libc.syscall(ctypes.c_long(nr), b".", b".oldroot")), "pivot_root")
    os.chdir("/")
    # The old root is covered, not unmounted: a lazy umount of the host's whole mount tree waits for an
    # RCU grace period (3-15 ms here, most of the sandbox's cost). Under the cover it is unreachable:
    # removing a mount needs CAP_SYS_ADMIN, which the command never has (empty bounding set,
    # no_new_privs), and no descriptor into it is passed on.
    mount("tmpfs", "/.oldroot", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0")
    return bound


# The device nodes a program may need; everything else of the host's /dev (disks, /dev/kmsg, /dev/log,
# the host's terminals in its devpts, /dev/kvm, /dev/fuse...) does not exist in the private root.
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))


def minimal_dev(target: str) -> list[str]:
    """A /dev at ``target`` (on the private root's tmpfs, sealed read-only later) holding only
    :data:`DEV_NODES` (bind mounts of the host's nodes), the usual symlinks, an empty ``shm`` (the
    caller mounts a private tmpfs there) and a *new* devpts instance: the command's own ptys only,
    none of the host's terminals. Without a devpts of its own the command gets no ptys at all.
    Returns the host nodes bound."""
    os.makedirs(target, exist_ok=True)
    bound = []
    for name in DEV_NODES:
        host = "/dev/" + name
        if not os.path.exists(host):
            continue
        with open(os.path.join(target, name), "w"):
            pass
        mount(host, os.path.join(target, name), None, MS_BIND)
        bound.append(host)
    os.mkdir(os.path.join(target, "shm"))
    os.mkdir(os.path.join(target, "pts"))
    links: tuple[tuple[str, str], ...] = DEV_LINKS
    try:
        mount_devpts(os.path.join(target, "pts"))
    except OSError:
        links = tuple(link for link in DEV_LINKS if link[0] != "ptmx")
    for name, dest in links:
        os.symlink(dest, os.path.join(target, name))
    return bound


def mount_devpts(target: str) -> None:
    """A new devpts instance at ``target``: ptys opened through it (or through the ``ptmx`` beside it)
    are the command's own, and no terminal of the host is listed or reachable there."""
    mount("devpts", target, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")


def seal_root() -> None:
    """The private root's own tmpfs read-only: nothing new appears beside the granted paths."""
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is absent or disabled."""
    ret = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
    return max(int(ret), 0)


def handled_fs(abi: int) -> int:
    mask = FS_V1_ALL
    if abi >= 2:
        mask |= FS_REFER
    if abi >= 3:
        mask |= FS_TRUNCATE
    if abi >= 5:
        mask |= FS_IOCTL_DEV
    return mask


def landlock_ruleset(abi: int, *, read: Iterable[str], write: Iterable[str], write_files: Iterable[str],
                     filter_tcp: bool) -> tuple[int, list[str]]:
    """A ruleset fd (not yet enforced) and the granted paths that did not exist (skipped)."""
    fs = handled_fs(abi)
    net = NET_BIND_TCP | NET_CONNECT_TCP if filter_tcp and abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    fd = _check(int(_libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)),
                "landlock_create_ruleset")
    missing: list[str] = []
    write_all = fs & ~(1 << 6 | 1 << 11)  # everything but creating device nodes
    grants = [(p, READ_ACCESS) for p in read] + [(p, write_all | READ_ACCESS) for p in write]
    grants += [(p, (FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV) & fs) for p in write_files]
    rule = _PathBeneath(0, -1)
    add_rule = _libc.syscall
    for path, access in grants:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            missing.append(path)
            continue
        try:
            is_dir = stat.S_ISDIR(os.fstat(pfd).st_mode)
            allowed = (access if is_dir else access & FILE_ACCESS) & fs
            if path.startswith("/dev"):
                allowed |= FS_IOCTL_DEV & fs
            rule.allowed_access = allowed
            rule.parent_fd = pfd
            _check(int(add_rule(SYS_LANDLOCK_ADD_RULE, fd, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0)),
                   f"landlock_add_rule {path}")
        finally:
            os.close(pfd)
    return fd, missing


def landlock_enforce(ruleset_fd: int) -> None:
    _check(int(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0)), "landlock_restrict_self")
    os.close(ruleset_fd)


def drop_capabilities() -> None:
    """Empty bounding set and ambient set: after exec the command has no capability, even as uid 0."""
    with contextlib.suppress(OSError):
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(64):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                break
            raise
    _clear_inheritable()


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def _clear_inheritable() -> None:
    hdr = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    if data[0].inheritable or data[1].inheritable:
        data[0].inheritable = data[1].inheritable = 0
        _check(_libc.capset(ctypes.byref(hdr), data), "capset")


def status_caps() -> dict[str, Any]:
    """CapEff/CapBnd of this process, from /proc/self/status (for reports)."""
    out: dict[str, Any] = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("CapEff", "CapBnd")):
                name, value = line.split(":")
                out[name] = int(value.strip(), 16)
    return out
