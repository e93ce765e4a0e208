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
* reports ``{"status": wait status, "exec_error": ..., "leftovers": n}`` on the status fd.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
import time
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


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


def child(cfg: dict[str, Any], err_w: int, old_mask: set[Any]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(cfg["status_fd"])  # the command must not be able to forge the supervisor's report
    for name, value in cfg["rlimits"]:
        res = getattr(resource, name)
        resource.setrlimit(res, (value, value))
    if cfg.get("cwd"):
        os.chdir(cfg["cwd"])
    os.execve(cfg["exe"], cfg["argv"], cfg["env"])


def main() -> None:
    cfg = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    status_fd = cfg["status_fd"]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    state: dict[str, Any] = {"status": None, "exec_error": None, "leftovers": 0, "terminated": False}
    if os.getppid() != cfg["parent"]:
        state["exec_error"] = "parent exited before the command started"
        os.write(status_fd, json.dumps(state).encode())
        return
    cgroup = cfg.get("cgroup")
    if cgroup:
        try:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            cgroup = None
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(err_r)
            child(cfg, err_w, old_mask)
        except BaseException as exc:
            msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            os.write(err_w, f"{type(exc).__name__}: {msg}".encode())
        os._exit(127)
    os.close(err_w)
    chunks = []
    while True:
        chunk = os.read(err_r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(err_r)
    if chunks:
        state["exec_error"] = b"".join(chunks).decode("utf-8", "replace")
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
        if info is not None and info.si_signo != signal.SIGCHLD and term_at is None:
            term_at = time.monotonic()
            state["terminated"] = True
            signal_all(signal.SIGTERM, cgroup)
    state["leftovers"] = kill_all(pid, state, cgroup)
    os.write(status_fd, json.dumps(state).encode())


if __name__ == "__main__":
    main()
