"""The small supervisor SecureShell puts between itself and every command (standard library only).

Run as ``python -I -S _supervisor.py``; reads its JSON config from stdin, then:

* becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``): every orphaned descendant of the command,
  including grandchildren that called ``setsid`` to leave the process group, is re-parented to it, so
  the whole tree stays visible through ``/proc/<pid>/task/*/children``;
* asks for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a killed agent leaves nothing running;
* joins the pids cgroup it is given (a process cap that also binds root), forks the command with stdin
  on /dev/null, the resource limits applied and the environment it was given, and waits;
* on SIGTERM/SIGINT/SIGHUP it sends SIGTERM to every descendant, waits ``grace`` seconds, then SIGKILLs
  what is left; when the command exits, any descendant it left running is killed too;
* reports ``{"status": wait status, "exec_error": ..., "leftovers": n, "layers": {...}}`` on the status fd.

With a ``confine`` section in the config it first enters a user and a PID namespace (see
:mod:`pyagent.shell._sandbox`) and forks an *init* (PID 1 of that namespace) which sets up the mount and
network namespaces, the private tmp and the Landlock ruleset, forks the command and reaps; when the
command exits, init exits and the kernel kills whatever the command left behind. ``layers`` says which
protection was set up ("ok") or why not; with ``require`` a missing layer refuses the run instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import time
from typing import Any

try:
    from pyagent.shell import _sandbox as sb
except ImportError:  # run as a script with -I -S: load the sibling module from this directory
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _sandbox as sb  # type: ignore[import-not-found,no-redef]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def asked_to_stop(info: Any) -> bool:
    """A real SIGTERM/SIGINT/SIGHUP. After a cgroup freeze sigtimedwait can return a garbage siginfo
    (a success with nothing dequeued); that is no request to stop."""
    return info is not None and info.si_signo in STOP_SIGNALS


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return found


def descendants(cgroup: str | None) -> set[int]:
    me = os.getpid()
    seen: set[int] = set()
    todo = [me]
    while todo:
        for child in children(todo.pop()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    if cgroup:
        try:
            with open(os.path.join(cgroup, "cgroup.procs")) as f:
                seen.update(int(x) for x in f.read().split())
        except OSError:
            pass
    seen.discard(me)
    return seen


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def reap(main_pid: int, state: dict[str, Any]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == main_pid and state.get("status") is None:
            state["status"] = status


def signal_all(sig: int, cgroup: str | None) -> int:
    pids = [p for p in descendants(cgroup) if alive(p)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return len(pids)


def kill_all(main_pid: int, state: dict[str, Any], cgroup: str | None) -> int:
    """SIGKILL every descendant until none is left (rounds catch processes forked meanwhile)."""
    total = 0
    for _ in range(1000):
        n = signal_all(signal.SIGKILL, cgroup)
        reap(main_pid, state)
        if n == 0 and not [p for p in descendants(cgroup) if alive(p)]:
            break
        total = max(total, n)
        time.sleep(0.002)
    reap(main_pid, state)
    return total


def apply_limits(cfg: dict[str, Any]) -> None:
    for name, value in cfg["rlimits"]:
        res = getattr(resource, name)
        resource.setrlimit(res, (value, value))


def child(cfg: dict[str, Any], old_mask: set[Any], ruleset: int | None) -> None:
    """The command's process, between fork and exec."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(cfg["status_fd"])  # the command must not be able to forge the supervisor's report
    conf = cfg.get("confine")
    if conf is not None:
        if conf.get("userns_ok"):
            sb.drop_capabilities()
        sb.prctl(sb.PR_SET_NO_NEW_PRIVS, 1)
        if ruleset is not None:
            sb.landlock_enforce(ruleset)
    apply_limits(cfg)
    if cfg.get("cwd"):
        os.chdir(cfg["cwd"])
    os.execve(cfg["exe"], cfg["argv"], cfg["env"])


def fork_command(cfg: dict[str, Any], old_mask: set[Any], ruleset: int | None) -> tuple[int, str | None]:
    """Forks the command; returns its pid and the exec error (None once exec succeeded)."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(err_r)
            child(cfg, old_mask, ruleset)
        except BaseException as exc:
            msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            os.write(err_w, f"{type(exc).__name__}: {msg}".encode())
        os._exit(127)
    os.close(err_w)
    if ruleset is not None:
        os.close(ruleset)
    chunks = []
    while True:
        chunk = os.read(err_r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(err_r)
    return pid, b"".join(chunks).decode("utf-8", "replace") if chunks else None


def prepare(conf: dict[str, Any], layers: dict[str, str], in_pidns: bool) -> int | None:
    """Mount/network namespaces, private tmp, read-only paths and the Landlock ruleset (not enforced yet)."""
    mnt = False
    shm: list[str] = []
    if conf.get("userns_ok"):
        try:
            sb.unshare(sb.CLONE_NEWNS | sb.CLONE_NEWCGROUP | sb.CLONE_NEWIPC)
            sb.mount(None, "/", None, sb.MS_REC | sb.MS_PRIVATE)
            mnt = True
            layers["mount namespace"] = "ok"
        except OSError as exc:
            layers["mount namespace"] = str(exc)
        if conf["network"]:
            layers["network namespace"] = "off: network allowed for this command"
        else:
            try:
                if conf.get("netfd") is not None:  # the holder's: no network, only its own loopback
                    sb.setns(conf["netfd"], sb.CLONE_NEWNET)
                    layers["network namespace"] = "ok (joined PyAgent's empty one)"
                else:
                    sb.unshare(sb.CLONE_NEWNET)
                    sb.loopback_up()
                    layers["network namespace"] = "ok"
            except OSError as exc:
                layers["network namespace"] = str(exc)
    else:
        layers["mount namespace"] = layers["network namespace"] = "needs the user namespace"
    pivoted = False
    if mnt:
        try:
            view = [*conf["view"], *conf["write"]]
            sb.private_root(conf["tmp"], [p for p in view if os.path.normpath(p) != os.path.normpath(conf["tmp"])],
                            empty_dirs=[conf["tmp"]], proc=in_pidns)
            pivoted = True
            layers["private root"] = "ok"
        except OSError as exc:
            layers["private root"] = str(exc)
            with contextlib.suppress(OSError):
                sb.umount(conf["tmp"])
    else:
        layers["private root"] = "needs the mount namespace"
    if pivoted and in_pidns:
        layers["private /proc"] = "ok"
    elif mnt and in_pidns:
        try:
            sb.mount("proc", "/proc", "proc", sb.MS_NOSUID | sb.MS_NODEV | sb.MS_NOEXEC)
            layers["private /proc"] = "ok"
        except OSError as exc:
            layers["private /proc"] = str(exc)
    else:
        layers["private /proc"] = "needs the mount and PID namespaces"
    if mnt:
        try:
            sb.mount_tmpfs(conf["tmp"], conf["tmp_size"])
            os.mkdir(os.path.join(conf["tmp"], "home"), 0o700)
            if os.path.isdir("/dev/shm"):
                sb.mount_tmpfs("/dev/shm", conf["tmp_size"])
                shm = ["/dev/shm"]  # private: writable like the tmp (never the host's, shared one)
            layers["private tmp"] = "ok"
        except OSError as exc:
            layers["private tmp"] = str(exc)
        if not pivoted:  # the host's /dev: at least a devpts of its own (none of the host's terminals)
            with contextlib.suppress(OSError):
                sb.mount_devpts("/dev/pts")
        ro_errors = []
        for path in conf["readonly"]:
            try:
                sb.bind_readonly(path)
            except OSError as exc:
                ro_errors.append(f"{path}: {exc}")
        layers[".git read-only"] = "; ".join(ro_errors) or "ok"
        if pivoted:
            try:
                sb.seal_root()
            except OSError as exc:
                layers["private root"] = f"not sealed: {exc}"
    else:
        with contextlib.suppress(OSError):
            os.mkdir(os.path.join(conf["tmp"], "home"), 0o700)
        layers["private tmp"] = "needs the mount namespace (a plain directory is used)"
        layers[".git read-only"] = "needs the mount namespace"
    abi = sb.landlock_abi()
    if abi <= 0:
        layers["landlock"] = "not available in this kernel"
        return None
    try:
        fd, _missing = sb.landlock_ruleset(
            abi, read=conf["read"], write=[*conf["write"], *shm], write_files=conf["write_files"],
            filter_tcp=not conf["network"] and not layers.get("network namespace", "").startswith("ok"))
    except OSError as exc:
        layers["landlock"] = str(exc)
        return None
    layers["landlock"] = f"ok (ABI {abi})"
    return fd


def refuse_incomplete(conf: dict[str, Any], layers: dict[str, str]) -> str | None:
    if not conf.get("require"):
        return None
    bad = [f"{k}: {v}" for k, v in layers.items() if v != "ok" and not v.startswith(("ok ", "off:"))]
    return "sandbox incomplete, refusing to run (--require-sandbox): " + "; ".join(bad) if bad else None


def count_others() -> int:
    """Processes in this PID namespace besides init (its /proc is private)."""
    try:
        return sum(1 for name in os.listdir("/proc") if name.isdigit() and name != "1")
    except OSError:
        return 0


def init_main(cfg: dict[str, Any], report_w: int, old_mask: set[Any]) -> None:
    """PID 1 of the command's namespace: set up, fork the command, reap, report, exit (killing the rest)."""
    sb.prctl(sb.PR_SET_PDEATHSIG, signal.SIGKILL)  # the supervisor gone: the whole namespace goes
    conf = cfg["confine"]
    layers: dict[str, str] = dict(conf["layers"])
    report: dict[str, Any] = {"status": None, "exec_error": None, "leftovers": 0, "layers": layers}
    ruleset = prepare(conf, layers, in_pidns=True)
    refusal = refuse_incomplete(conf, layers)
    if refusal:
        report["exec_error"] = refusal
        os.write(report_w, json.dumps(report).encode())
        return
    pid, err = fork_command(cfg, old_mask, ruleset)
    report["exec_error"] = err
    while report["status"] is None:
        info = signal.sigtimedwait(SIGNALS, 1.0)
        if asked_to_stop(info):
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGTERM)  # every process of the namespace but init itself
        reap(pid, report)
    report["leftovers"] = count_others()
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)
    os.write(report_w, json.dumps(report).encode())


def enter_namespaces(conf: dict[str, Any], layers: dict[str, str]) -> bool:
    """User + PID namespace for the supervisor's children; True when the PID namespace exists.
    With a namespace holder (``holder``: its pid) the user and network namespaces are joined, not made."""
    try:
        joined = False
        if conf.get("holder") and not conf["network"]:
            try:
                userfd = os.open(f"/proc/{conf['holder']}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
                netfd = os.open(f"/proc/{conf['holder']}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                sb.setns(userfd, sb.CLONE_NEWUSER)
                os.close(userfd)
                conf["netfd"] = netfd
                joined = True
            except OSError:
                conf["netfd"] = None  # the holder is gone: make our own
        if not joined:
            sb.enter_user_namespace()
        layers["user namespace"] = "ok"
        conf["userns_ok"] = True
    except OSError as exc:
        layers["user namespace"] = str(exc)
        layers["pid namespace"] = "needs the user namespace"
        return False
    try:
        sb.unshare(sb.CLONE_NEWPID)
        layers["pid namespace"] = "ok"
        return True
    except OSError as exc:
        layers["pid namespace"] = str(exc)
        return False


def start(cfg: dict[str, Any], state: dict[str, Any], old_mask: set[Any]) -> tuple[int | None, int | None]:
    """Starts the command (inside its namespaces when confined); returns (pid to wait for, report fd)."""
    conf = cfg.get("confine")
    if conf is None:
        pid, state["exec_error"] = fork_command(cfg, old_mask, None)
        return pid, None
    layers: dict[str, str] = {}
    conf["layers"] = layers
    if enter_namespaces(conf, layers):
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(report_r)
                init_main(cfg, report_w, old_mask)
            finally:
                os._exit(0)
        os.close(report_w)
        return pid, report_r
    ruleset = prepare(conf, layers, in_pidns=False)
    state["layers"] = layers
    refusal = refuse_incomplete(conf, layers)
    if refusal:
        state["exec_error"] = refusal
        return None, None
    pid, state["exec_error"] = fork_command(cfg, old_mask, ruleset)
    return pid, None


def read_report(fd: int, state: dict[str, Any]) -> None:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    os.close(fd)
    if not chunks:
        state["exec_error"] = state["exec_error"] or None
        return
    report = json.loads(b"".join(chunks))
    state["layers"] = report["layers"]
    state["exec_error"] = report["exec_error"]
    state["init_leftovers"] = report["leftovers"]
    state["status"] = report["status"] if report["status"] is not None else state["status"]


def main() -> None:
    cfg = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    status_fd = cfg["status_fd"]
    sb.prctl(PR_SET_CHILD_SUBREAPER, 1)
    sb.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    state: dict[str, Any] = {"status": None, "exec_error": None, "leftovers": 0, "terminated": False}
    if os.getppid() != cfg["parent"]:
        state["exec_error"] = "parent exited before the command started"
        os.write(status_fd, json.dumps(state).encode())
        return
    cgroups = [c for c in cfg.get("cgroups", []) if c]
    for path in cgroups:
        try:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            cgroups.remove(path)
    pids_cgroup = cfg.get("cgroup") if cfg.get("cgroup") in cgroups else None
    pid, report_fd = start(cfg, state, old_mask)
    if pid is None:
        os.write(status_fd, json.dumps(state).encode())
        return
    grace = float(cfg["grace"])
    term_at: float | None = None
    while True:
        reap(pid, state)
        if state["status"] is not None:
            break
        if term_at is not None and time.monotonic() - term_at >= grace:
            break
        wait = 1.0 if term_at is None else max(0.005, grace - (time.monotonic() - term_at))
        info = signal.sigtimedwait(SIGNALS, wait)
        if asked_to_stop(info) and term_at is None:
            term_at = time.monotonic()
            state["terminated"] = True
            signal_all(signal.SIGTERM, pids_cgroup)
    state["leftovers"] = kill_all(pid, state, pids_cgroup)
    if report_fd is not None:
        state["status"] = None
        read_report(report_fd, state)
        state["leftovers"] = max(state["leftovers"], state.pop("init_leftovers", 0))
        if state["status"] is None and state["exec_error"] is None and not state["terminated"]:
            state["exec_error"] = "the sandbox's init failed before the command ran"
    os.write(status_fd, json.dumps(state).encode())


if __name__ == "__main__":
    if sys.argv[1:] == ["--hold"]:
        sb.hold_namespaces()
    else:
        main()
