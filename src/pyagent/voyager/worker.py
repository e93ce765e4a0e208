"""The child process a node runs each teleported task in.

A task runs in its own process (its own session, a scrubbed environment, a fresh temporary
work folder) so that a node stopping can kill it outright instead of waiting on a thread, and
so that a misbehaving task cannot touch the node's sockets or keys. Protocol: one msgpack
request on stdin, one msgpack reply on stdout (``{"ok": result}`` or ``{"error": [type, msg]}``).

Preemption: the node holds the write end of a control pipe (``PYAGENT_CONTROL_FD`` in the worker).
``F`` freezes the commands the task is running (their process trees are stopped by SecureShell's
freezer and their timeouts stop), ``T`` thaws them. A pipe, not a signal: a byte sent before the
worker is ready waits in the pipe instead of killing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

import msgpack

# Only what a Python tool chain needs; never the parent's tokens or keys.
ENV_ALLOW = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "SYSTEMROOT")


def scrubbed_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ENV_ALLOW}


class WorkerControl:
    """The node's end of a worker's control pipe: freezes and thaws the task's running commands.

    It joins the fleet task's command watch (:func:`pyagent.shell.secure.enlist`), so the scheduler
    preempting the task freezes the worker's commands like it freezes its own."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.frozen = False

    def _send(self, byte: bytes) -> None:
        with contextlib.suppress(OSError):  # the worker is gone: nothing left to freeze
            os.write(self.fd, byte)

    def freeze(self) -> None:
        self.frozen = True
        self._send(b"F")

    def thaw(self) -> None:
        self.frozen = False
        self._send(b"T")


async def run_in_worker(payload: dict[str, Any], *, timeout: float | None) -> dict[str, Any]:
    """Run ``payload`` in a worker process; kill its whole process group on timeout or cancel.

    ``timeout`` None: the caller bounds it (a fleet task's timeout, which stops while it is frozen)."""
    from pyagent.shell.secure import enlist

    control_r, control_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pyagent.voyager.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**scrubbed_env(), "PYAGENT_NODE_PID": str(os.getpid()), "PYAGENT_CONTROL_FD": str(control_r)},
            start_new_session=True,
            pass_fds=(control_r,),
        )
    except BaseException:
        os.close(control_w)
        raise
    finally:
        os.close(control_r)
    control = WorkerControl(control_w)
    watch = enlist(control)
    data = msgpack.packb(payload, use_bin_type=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(proc.wait(), 1.0)
        raise
    finally:
        if watch is not None:
            watch.running.discard(control)
        os.close(control_w)
    if proc.returncode != 0 or not out:
        tail = err.decode("utf-8", "replace")[-500:]
        raise RuntimeError(f"task worker exited with {proc.returncode}: {tail}")
    reply = msgpack.unpackb(out, raw=False)
    if not isinstance(reply, dict):
        raise RuntimeError("task worker sent an invalid reply")
    if "error" in reply:
        etype, msg = reply["error"]
        raise RuntimeError(f"{etype}: {msg}")
    result: dict[str, Any] = reply["ok"]
    return result


def _exit_when_orphaned(parent: int) -> None:
    """If the node dies (even by SIGKILL) the task is void: kill this worker's whole group."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.25)
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


async def _serve(payload: dict[str, Any], control_fd: int | None) -> dict[str, Any]:
    """Run the task with its commands in one watch that the control pipe freezes and thaws."""
    from pyagent.shell.secure import CommandWatch
    from pyagent.voyager.tasks import run_payload

    watch = CommandWatch()
    loop = asyncio.get_running_loop()
    if control_fd is not None:
        os.set_blocking(control_fd, False)

        def on_control() -> None:
            try:
                data = os.read(control_fd, 64)
            except BlockingIOError:
                return
            if not data:  # the node closed its end
                loop.remove_reader(control_fd)
            elif data[-1:] == b"F":  # only the last word counts
                watch.freeze()
            else:
                watch.thaw()

        loop.add_reader(control_fd, on_control)
    try:
        with watch:
            return await run_payload(payload)
    finally:
        if control_fd is not None:
            loop.remove_reader(control_fd)


def main() -> int:
    _exit_when_orphaned(int(os.environ.get("PYAGENT_NODE_PID", "0")) or os.getppid())
    control = os.environ.get("PYAGENT_CONTROL_FD")
    payload = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)
    try:
        reply: dict[str, Any] = {"ok": asyncio.run(_serve(payload, int(control) if control else None))}
    except Exception as exc:
        reply = {"error": [type(exc).__name__, str(exc)[:2000]]}
    sys.stdout.buffer.write(msgpack.packb(reply, use_bin_type=True))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
