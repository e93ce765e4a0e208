"""SecureShell: how agents run commands (tests, linters, builds) without trusting them.

* exec without a shell unless ``shell=True``; a missing command is a clear :class:`CommandNotFoundError`;
* environment from an allow-list (PATH, HOME, LANG, LC_*, TERM, TMPDIR + names the caller allows, +
  values the caller passes): API keys and tokens in the parent never reach the child;
* stdin on /dev/null, setrlimit limits (CPU, address space, file size, open files, processes) and a pids
  cgroup where available (see :mod:`pyagent.shell.limits`);
* whole-tree kill: every command runs under a small supervisor (:mod:`pyagent.shell._supervisor`) in its
  own session and process group. Confined, the command is inside a PID namespace whose init dies with
  the command, so the kernel kills every descendant; where no PID namespace can be made, the supervisor
  is a child subreaper, so descendants that ``setsid`` away from the group are re-parented to it and
  still killed. On timeout it sends SIGTERM to the tree, then SIGKILL after ``kill_grace`` seconds.
  Cost: one ~20 ms interpreter start;
* output capped in memory per stream (head and tail kept, the dropped byte count reported) and streamed
  live line by line to a callback or an async iterator;
* confinement on by default on Linux (:mod:`pyagent.shell.confine`): user, PID, mount and network
  namespaces, Landlock (reads and writes), no_new_privs, no capabilities, memory and tmp caps. With a PID
  namespace the tree's death is the kernel's job: when the command's init exits, everything left dies;
* a timeout always (``DEFAULT_TIMEOUT`` when none is given); a running command can be frozen and thawed
  (preemption by the fleet, :class:`CommandWatch`), and its timeout clock stops while it is frozen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pyagent.shell._supervisor import children
from pyagent.shell.confine import (
    DEFAULT_TIMEOUT,
    SUPERVISOR,
    Confinement,
    Protection,
    SandboxUnavailableError,
    make_nondumpable,
    plan,
    protections,
)
from pyagent.shell.limits import (
    ResourceLimits,
    create_cgroup,
    create_memory_cgroup,
    create_pids_cgroup,
    freezer_cgroup_base,
    remove_cgroup,
)
from pyagent.shell.output import CappedBuffer, LineSplitter

BASE_ENV = ("PATH", "HOME", "LANG", "TERM", "TMPDIR")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_CHUNK = 64 * 1024


class CommandNotFoundError(FileNotFoundError):
    """The command does not exist or is not executable (nothing was started)."""


@dataclass(frozen=True)
class ShellResult:
    """Outcome of one command. ``exit_code`` is None when PyAgent killed it (timeout), ``-N`` when a
    signal N ended it; ``dropped_bytes`` counts output left out by the cap (stdout + stderr)."""

    argv: tuple[str, ...]
    exit_code: int | None
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    killed: bool = False
    truncated: bool = False
    dropped_bytes: int = 0
    signal: int | None = None
    leftovers: int = 0  # descendants still running after the command exited, killed by the supervisor
    protections: tuple[Protection, ...] = ()  # the sandbox this command ran in (see pyagent.shell.confine)
    frozen_seconds: float = 0.0  # time spent frozen by preemption (not counted against the timeout)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def filtered_env(allow: Sequence[str], extra: Mapping[str, str] | None = None,
                 source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: allow-listed names from ``source`` (the parent's) plus ``extra``."""
    source = os.environ if source is None else source
    names = set(BASE_ENV) | set(allow)
    env = {k: v for k, v in source.items() if k in names or k.startswith("LC_")}
    env.setdefault("PATH", DEFAULT_PATH)
    if extra:
        env.update(extra)
    return env


def resolve_command(name: str, path: str) -> str:
    if os.sep in name:
        full = os.path.abspath(name)
        if not os.path.exists(full):
            raise CommandNotFoundError(f"command not found: {name} (no such file)")
        if os.path.isdir(full) or not os.access(full, os.X_OK):
            raise CommandNotFoundError(f"command not runnable: {name} (not an executable file)")
        return full
    found = shutil.which(name, path=path)
    if found is None:
        raise CommandNotFoundError(f"command not found: {name} (searched PATH={path})")
    return found


class Freezable(Protocol):
    """Running work that can be stopped and resumed: a SecureShell command, a node's task worker."""

    def freeze(self) -> None: ...

    def thaw(self) -> None: ...


class CommandWatch:
    """The running work of one unit of work (a fleet task), frozen and thawed together.

    ``with watch:`` makes every SecureShell command started inside (in this asyncio task) register here
    (anything else freezable joins through :func:`enlist`); work that joins while the watch is frozen is
    frozen from its start."""

    def __init__(self) -> None:
        self.running: set[Freezable] = set()
        self.frozen = False
        self._tokens: list[Token[CommandWatch | None]] = []

    def freeze(self) -> int:
        self.frozen = True
        for cmd in list(self.running):
            cmd.freeze()
        return len(self.running)

    def thaw(self) -> None:
        self.frozen = False
        for cmd in list(self.running):
            cmd.thaw()

    def __enter__(self) -> CommandWatch:
        self._tokens.append(_WATCH.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _WATCH.reset(self._tokens.pop())


def enlist(work: Freezable) -> CommandWatch | None:
    """Register ``work`` with the watch of the current task (frozen at once if the watch is); returns the
    watch, from whose ``running`` the caller discards ``work`` when it ends."""
    watch = _WATCH.get()
    if watch is not None:
        watch.running.add(work)
        if watch.frozen:
            work.freeze()
    return watch


_WATCH: ContextVar[CommandWatch | None] = ContextVar("pyagent_command_watch", default=None)


def tree_pids(root: int) -> list[int]:
    """Every descendant of ``root`` (not root itself), from /proc's children lists."""
    seen: list[int] = []
    todo = [root]
    while todo:
        for child in children(todo.pop()):
            if child not in seen:
                seen.append(child)
                todo.append(child)
    return seen


class RunningCommand:
    """A started SecureShell command: ``await wait()`` for its result; ``freeze()``/``thaw()`` stop and
    resume its whole process tree (cgroup v2 freezer, else SIGSTOP/SIGCONT of every process of the tree)
    without counting the frozen time against its timeout. Call from the event loop's thread."""

    def __init__(self, shell: SecureShell, proc: asyncio.subprocess.Process, args: list[str], cfg: dict[str, Any],
                 timeout: float, on_line: Callable[[str, str], None] | None, status_r: int, start: float,
                 cleanup: Callable[[], None], freezer: str | None, info: dict[str, Any]) -> None:
        self.shell = shell
        self.proc = proc
        self.pid = proc.pid  # the supervisor's pid (host view)
        self.args = args
        self.timeout = timeout
        self._cfg = cfg
        self._on_line = on_line
        self._status_r = status_r
        self._start = start
        self._cleanup = cleanup
        self._freezer = freezer
        self._info = info
        self._stopped: list[int] = []
        self.frozen = False
        self._frozen_at = 0.0
        self.frozen_seconds = 0.0
        self._thawed = asyncio.Event()
        self._thawed.set()
        self.done = False
        cap = shell.max_output_bytes
        self._out, self._err = CappedBuffer(cap), CappedBuffer(cap)
        self._work: asyncio.Future[Any] | None = None
        self._watch = enlist(self)

    @property
    def freeze_method(self) -> str:
        return "cgroup v2 freezer" if self._freezer else "SIGSTOP of the process tree"

    def pids(self) -> list[int]:
        """The command tree's processes (host pids), without the supervisor."""
        return tree_pids(self.pid)

    def freeze(self) -> None:
        if self.frozen or self.done:
            return
        self.frozen = True
        self._frozen_at = time.monotonic()
        self._thawed.clear()
        if self._freezer is not None:
            with open(os.path.join(self._freezer, "cgroup.freeze"), "w") as f:
                f.write("1")
            return
        stopped: list[int] = []
        for _ in range(50):  # rounds catch processes forked while we were stopping their parents
            new = [p for p in self.pids() if p not in stopped]
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped += new
        self._stopped = stopped

    def thaw(self) -> None:
        if not self.frozen:
            return
        self.frozen = False
        self.frozen_seconds += time.monotonic() - self._frozen_at
        if self._freezer is not None:
            with contextlib.suppress(OSError), open(os.path.join(self._freezer, "cgroup.freeze"), "w") as f:
                f.write("0")
        else:
            for pid in [*self._stopped, *self.pids()]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            self._stopped = []
        self._thawed.set()

    def _active_seconds(self) -> float:
        frozen = self.frozen_seconds + (time.monotonic() - self._frozen_at if self.frozen else 0.0)
        return time.monotonic() - self._start - frozen

    async def _until_deadline(self, work: asyncio.Future[Any]) -> bool:
        """Waits for ``work``; False when the (unfrozen) time ran out first."""
        while True:
            if self.frozen:
                thawed = asyncio.ensure_future(self._thawed.wait())
                try:
                    await asyncio.wait({work, thawed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    thawed.cancel()
                if work.done():
                    return True
                continue
            left = self.timeout - self._active_seconds()
            if left <= 0:
                return False
            done, _ = await asyncio.wait({work}, timeout=left)
            if done:
                return True

    def _terminate(self, sig: int = signal.SIGTERM) -> None:
        self.thaw()  # a frozen supervisor could not act on the signal
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    async def wait(self) -> ShellResult:
        """The command's result once it (and its tree) ended or was killed at its timeout."""
        try:
            return await self._wait()
        finally:
            self._close()

    async def wait_closed(self) -> None:
        """After a failed start: reap the supervisor and release what the run holds."""
        try:
            await self.proc.wait()
        finally:
            self._close()

    def _close(self) -> None:
        if self.done:
            return
        self.done = True
        if self._watch is not None:
            self._watch.running.discard(self)
        os.close(self._status_r)
        self._cleanup()

    async def _begin(self) -> None:
        """Hands the supervisor its config and starts reading the output (before anyone waits)."""
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(json.dumps(self._cfg).encode())
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        on_line = self._on_line

        async def pump(stream: asyncio.StreamReader, buf: CappedBuffer, name: str) -> None:
            splitter = LineSplitter(name, on_line) if on_line is not None else None
            while True:
                chunk = await stream.read(_CHUNK)
                if not chunk:
                    break
                buf.feed(chunk)
                if splitter is not None:
                    splitter.feed(chunk)
            if splitter is not None:
                splitter.close()

        self._work = asyncio.gather(pump(proc.stdout, self._out, "stdout"), pump(proc.stderr, self._err, "stderr"),
                                    proc.wait())

    async def _wait(self) -> ShellResult:
        proc, work, out, err = self.proc, self._work, self._out, self._err
        assert work is not None, "started by SecureShell.start()"
        timed_out = False
        grace = self.shell.kill_grace
        try:
            if not await self._until_deadline(work):
                timed_out = True
                self._terminate()  # the supervisor terminates the whole tree
                try:
                    await asyncio.wait_for(asyncio.shield(work), grace + 5.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await work
        except asyncio.CancelledError:
            self._terminate()
            raise
        return self._result(out, err, timed_out)

    def _result(self, out: CappedBuffer, err: CappedBuffer, timed_out: bool) -> ShellResult:
        duration = time.monotonic() - self._start
        raw = b""
        with contextlib.suppress(BlockingIOError, OSError):
            os.set_blocking(self._status_r, False)
            raw = os.read(self._status_r, 65536)
        status = json.loads(raw) if raw else {}
        policy: Confinement = self._info["policy"]
        rows = protections(policy, status.get("layers", {}), memory=self._info["memory"], pids=self._info["pids"],
                           freezer=self.freeze_method, timeout=self.timeout)
        if status.get("exec_error"):
            if str(status["exec_error"]).startswith("sandbox incomplete"):
                raise SandboxUnavailableError(status["exec_error"])
            raise CommandNotFoundError(f"cannot run {self.args[0]}: {status['exec_error']}")
        wait_status = status.get("status")
        exit_code: int | None
        sig: int | None = None
        if wait_status is None:
            exit_code = None if timed_out else self.proc.returncode
        elif os.WIFSIGNALED(wait_status):
            sig = os.WTERMSIG(wait_status)
            exit_code = None if timed_out else -sig
        else:
            exit_code = None if timed_out else os.WEXITSTATUS(wait_status)
        dropped = out.dropped + err.dropped
        return ShellResult(
            argv=tuple(self.args), exit_code=exit_code, stdout=out.text(), stderr=err.text(), duration=duration,
            timed_out=timed_out, killed=timed_out or sig is not None, truncated=dropped > 0,
            dropped_bytes=dropped, signal=sig, leftovers=int(status.get("leftovers", 0)), protections=rows,
            frozen_seconds=self.frozen_seconds,
        )


class SecureShell:
    """Runs commands with an allow-listed environment, resource limits, confinement and a whole-tree kill."""

    def __init__(self, *, env_allow: Sequence[str] = (), timeout: float | None = 60.0,
                 limits: ResourceLimits | None = None, max_output_bytes: int = 1 << 20,
                 kill_grace: float = 2.0, confine: Confinement | None = None) -> None:
        self.env_allow = tuple(env_allow)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.limits = limits if limits is not None else ResourceLimits()
        self.max_output_bytes = max_output_bytes
        self.kill_grace = kill_grace
        self.confine = confine if confine is not None else Confinement.default()
        if self.confine.enabled:
            make_nondumpable()  # the secrets this process holds stay out of reach of what it runs

    async def run(self, argv: Sequence[str] | str, *, cwd: str | os.PathLike[str] | None = None,
                  timeout: float | None = None, shell: bool = False,
                  on_line: Callable[[str, str], None] | None = None,
                  env: Mapping[str, str] | None = None, writable: Sequence[str | os.PathLike[str]] = ()) -> ShellResult:
        """Runs ``argv`` to completion (or timeout); ``on_line(stream, line)`` sees output live.
        ``writable``: directories the command may write besides its cwd and private tmp."""
        cmd = await self.start(argv, cwd=cwd, timeout=timeout, shell=shell, on_line=on_line, env=env,
                               writable=writable)
        return await cmd.wait()

    async def start(self, argv: Sequence[str] | str, *, cwd: str | os.PathLike[str] | None = None,
                    timeout: float | None = None, shell: bool = False,
                    on_line: Callable[[str, str], None] | None = None,
                    env: Mapping[str, str] | None = None,
                    writable: Sequence[str | os.PathLike[str]] = ()) -> RunningCommand:
        """Starts ``argv``; the returned command can be frozen/thawed and must be awaited (``wait()``)."""
        args = self._argv(argv, shell)
        child_env = filtered_env(self.env_allow, env)
        exe = resolve_command(args[0], child_env["PATH"])
        cwd_s = None
        if cwd is not None:
            cwd_s = os.path.abspath(os.fspath(cwd))
            if not os.path.isdir(cwd_s):
                raise FileNotFoundError(f"working directory does not exist: {cwd_s}")
        timeout = self.timeout if timeout is None else timeout
        policy = self.confine
        made: list[str] = []
        tmp: str | None = None

        def cleanup() -> None:
            for path in made:
                remove_cgroup(path)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

        try:
            cgroup = create_pids_cgroup(self.limits.processes + 1) if self.limits.processes is not None else None
            made += [cgroup] if cgroup else []
            limits = self.limits
            memory_desc: str | None = None
            freezer: str | None = None
            confine_cfg: dict[str, Any] | None = None
            if policy.enabled:
                tmp = tempfile.mkdtemp(prefix="pyagent-sbx-")
                work = cwd_s or os.getcwd()
                confine_cfg = plan(policy, cwd=work, exe=exe, tmp=tmp,
                                   extra_write=[os.path.abspath(os.fspath(w)) for w in writable])
                child_env.update({"TMPDIR": tmp, "TMP": tmp, "TEMP": tmp})
                if not env or "HOME" not in env:
                    child_env["HOME"] = os.path.join(tmp, "home")
                if policy.memory is not None:
                    mem = create_memory_cgroup(policy.memory)
                    if mem is not None:
                        made.append(mem)
                        memory_desc = f"{policy.memory >> 20} MiB for the tree (memory cgroup)"
                    elif limits.address_space is None:
                        limits = replace(limits, address_space=policy.memory + (policy.memory >> 1))
                if policy.freezer != "signal":
                    freezer = create_cgroup(freezer_cgroup_base())
                    if freezer is not None:
                        made.append(freezer)
                    elif policy.freezer == "cgroup":
                        raise SandboxUnavailableError("no cgroup v2 freezer can be created on this machine")
                if policy.require and memory_desc is None:
                    raise SandboxUnavailableError("sandbox incomplete: no memory cap (set one, or drop --require-sandbox)")
            if memory_desc is None and limits.address_space is not None:
                memory_desc = f"{limits.address_space >> 20} MiB of address space per process (RLIMIT_AS)"
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            cfg: dict[str, Any] = {
                "exe": exe, "argv": args, "env": child_env, "cwd": cwd_s, "rlimits": limits.rlimits(),
                "grace": self.kill_grace, "status_fd": status_w, "parent": os.getpid(), "cgroup": cgroup,
                "cgroups": list(made), "confine": confine_cfg,
            }
            start = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-S", SUPERVISOR,
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    pass_fds=(status_w,), start_new_session=True, env={"PATH": DEFAULT_PATH},
                )
            except BaseException:
                os.close(status_r)
                raise
            finally:
                os.close(status_w)
        except BaseException:
            cleanup()
            raise
        info = {"policy": policy, "memory": memory_desc, "pids": f"cgroup {cgroup}" if cgroup else None}
        cmd = RunningCommand(self, proc, args, cfg, timeout, on_line, status_r, start, cleanup, freezer, info)
        try:
            await cmd._begin()
        except BaseException:
            cmd._terminate()
            await cmd.wait_closed()
            raise
        return cmd

    @staticmethod
    def _argv(argv: Sequence[str] | str, shell: bool) -> list[str]:
        if shell:
            cmd = argv if isinstance(argv, str) else " ".join(argv)
            return ["/bin/sh", "-c", cmd]
        if isinstance(argv, str):
            raise TypeError("pass argv as a list of arguments, or shell=True to run a shell command line")
        args = [os.fspath(a) for a in argv]
        if not args:
            raise ValueError("empty command")
        return args

    def run_sync(self, argv: Sequence[str] | str, **kw: Any) -> ShellResult:
        """``run`` for synchronous callers; works inside a running event loop too (uses a thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(argv, **kw))
        box: list[ShellResult | BaseException] = []

        def target() -> None:
            try:
                box.append(asyncio.run(self.run(argv, **kw)))
            except BaseException as exc:
                box.append(exc)

        thread = threading.Thread(target=target, name="pyagent-shell")
        thread.start()
        thread.join()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def stream(self, argv: Sequence[str] | str, **kw: Any) -> ShellStream:
        """Async iterator of ``(stream, line)`` as they are printed; ``.result`` once exhausted."""
        return ShellStream(self, argv, kw)


class ShellStream:
    """``async for name, line in shell.stream(argv)``; the ShellResult is in ``.result`` afterwards."""

    def __init__(self, shell: SecureShell, argv: Sequence[str] | str, kw: dict[str, Any]) -> None:
        self._shell = shell
        self._argv = argv
        self._kw = kw
        self._queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._task: asyncio.Task[ShellResult] | None = None
        self.result: ShellResult | None = None

    def __aiter__(self) -> AsyncIterator[tuple[str, str]]:
        return self

    async def __anext__(self) -> tuple[str, str]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._runner())
        item = await self._queue.get()
        if item is None:
            self.result = await self._task
            raise StopAsyncIteration
        return item

    async def _runner(self) -> ShellResult:
        try:
            return await self._shell.run(self._argv, on_line=lambda n, s: self._queue.put_nowait((n, s)),
                                         **self._kw)
        finally:
            self._queue.put_nowait(None)

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
