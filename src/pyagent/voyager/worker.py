"""The child process a node runs each teleported task in.

A task runs in its own process (its own session, a scrubbed environment, a fresh temporary
work folder) so that a node stopping can kill it outright instead of waiting on a thread, and
so that a misbehaving task cannot touch the node's sockets or keys. Protocol: one msgpack
request on stdin, one msgpack reply on stdout (``{"ok": result}`` or ``{"error": [type, msg]}``).
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


async def run_in_worker(payload: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Run ``payload`` in a worker process; kill its whole process group on timeout or cancel."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pyagent.voyager.worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**scrubbed_env(), "PYAGENT_NODE_PID": str(os.getpid())},
        start_new_session=True,
    )
    data = msgpack.packb(payload, use_bin_type=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(proc.wait(), 1.0)
        raise
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


def main() -> int:
    from pyagent.voyager.tasks import run_payload

    _exit_when_orphaned(int(os.environ.get("PYAGENT_NODE_PID", "0")) or os.getppid())
    payload = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)
    try:
        reply: dict[str, Any] = {"ok": run_payload(payload)}
    except Exception as exc:
        reply = {"error": [type(exc).__name__, str(exc)[:2000]]}
    sys.stdout.buffer.write(msgpack.packb(reply, use_bin_type=True))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
