"""SecureShell: how agents run commands (tests, linters, builds) without trusting them.

* exec without a shell unless ``shell=True``; a missing command is a clear :class:`CommandNotFoundError`;
* environment from an allow-list (PATH, HOME, LANG, LC_*, TERM, TMPDIR + names the caller allows, +
  values the caller passes): API keys and tokens in the parent never reach the child;
* stdin on /dev/null, setrlimit limits (CPU, address space, file size, open files, processes) and a pids
  cgroup where available (see :mod:`pyagent.shell.limits`);
* whole-tree kill: every command runs under a small supervisor (:mod:`pyagent.shell._supervisor`) in its
  own session and process group. The supervisor is a child subreaper, so descendants that ``setsid``
  away from the group are re-parented to it and still killed; on timeout it sends SIGTERM to the tree,
  then SIGKILL after ``kill_grace`` seconds. We chose the subreaper over cgroup v2 (needs a delegated
  hierarchy, rarely available in containers/CI) and over a PID namespace (needs CAP_SYS_ADMIN or user
  namespaces): it works unprivileged everywhere Linux >= 3.4 runs. Cost: one ~20 ms interpreter start;
* output capped in memory per stream (head and tail kept, the dropped byte count reported) and streamed
  live line by line to a callback or an async iterator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyagent.shell.limits import ResourceLimits, create_pids_cgroup, remove_cgroup
from pyagent.shell.output import CappedBuffer, LineSplitter

SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_supervisor.py")
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


class SecureShell:
    """Runs commands with an allow-listed environment, resource limits and a whole-tree kill."""

    def __init__(self, *, env_allow: Sequence[str] = (), timeout: float | None = 60.0,
                 limits: ResourceLimits | None = None, max_output_bytes: int = 1 << 20,
                 kill_grace: float = 2.0) -> None:
        self.env_allow = tuple(env_allow)
        self.timeout = timeout
        self.limits = limits if limits is not None else ResourceLimits()
        self.max_output_bytes = max_output_bytes
        self.kill_grace = kill_grace

    async def run(self, argv: Sequence[str] | str, *, cwd: str | os.PathLike[str] | None = None,
                  timeout: float | None = None, shell: bool = False,
                  on_line: Callable[[str, str], None] | None = None,
                  env: Mapping[str, str] | None = None) -> ShellResult:
        """Runs ``argv`` to completion (or timeout); ``on_line(stream, line)`` sees output live."""
        args = self._argv(argv, shell)
        child_env = filtered_env(self.env_allow, env)
        exe = resolve_command(args[0], child_env["PATH"])
        cwd_s = None
        if cwd is not None:
            cwd_s = os.path.abspath(os.fspath(cwd))
            if not os.path.isdir(cwd_s):
                raise FileNotFoundError(f"working directory does not exist: {cwd_s}")
        timeout = self.timeout if timeout is None else timeout
        cgroup = create_pids_cgroup(self.limits.processes + 1) if self.limits.processes is not None else None
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        cfg: dict[str, Any] = {
            "exe": exe, "argv": args, "env": child_env, "cwd": cwd_s, "rlimits": self.limits.rlimits(),
            "grace": self.kill_grace, "status_fd": status_w, "parent": os.getpid(), "cgroup": cgroup,
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
            os.close(status_w)
            if cgroup:
                remove_cgroup(cgroup)
            raise
        os.close(status_w)
        try:
            return await self._supervise(proc, args, cfg, timeout, on_line, status_r, start)
        finally:
            os.close(status_r)
            if cgroup:
                remove_cgroup(cgroup)

    async def _supervise(self, proc: asyncio.subprocess.Process, args: list[str], cfg: dict[str, Any],
                         timeout: float | None, on_line: Callable[[str, str], None] | None,
                         status_r: int, start: float) -> ShellResult:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(json.dumps(cfg).encode())
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        out = CappedBuffer(self.max_output_bytes)
        err = CappedBuffer(self.max_output_bytes)

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

        work = asyncio.gather(pump(proc.stdout, out, "stdout"), pump(proc.stderr, err, "stderr"), proc.wait())
        timed_out = False
        try:
            try:
                await asyncio.wait_for(asyncio.shield(work), timeout)
            except TimeoutError:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)  # the supervisor terminates the whole tree
                try:
                    await asyncio.wait_for(asyncio.shield(work), self.kill_grace + 5.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await work
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            raise
        duration = time.monotonic() - start
        raw = b""
        with contextlib.suppress(BlockingIOError, OSError):
            os.set_blocking(status_r, False)
            raw = os.read(status_r, 65536)
        status = json.loads(raw) if raw else {}
        if status.get("exec_error"):
            raise CommandNotFoundError(f"cannot run {args[0]}: {status['exec_error']}")
        wait_status = status.get("status")
        exit_code: int | None
        sig: int | None = None
        if wait_status is None:
            exit_code = None if timed_out else proc.returncode
        elif os.WIFSIGNALED(wait_status):
            sig = os.WTERMSIG(wait_status)
            exit_code = None if timed_out else -sig
        else:
            exit_code = None if timed_out else os.WEXITSTATUS(wait_status)
        dropped = out.dropped + err.dropped
        return ShellResult(
            argv=tuple(args), exit_code=exit_code, stdout=out.text(), stderr=err.text(), duration=duration,
            timed_out=timed_out, killed=timed_out or sig is not None, truncated=dropped > 0,
            dropped_bytes=dropped, signal=sig, leftovers=int(status.get("leftovers", 0)),
        )

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
