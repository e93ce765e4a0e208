"""Start ``pyagent serve`` instances (single, prefill, decode, router) as real subprocesses on loopback."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Instance:
    """One ``pyagent serve`` process; ``restart()`` brings it back on the same ports after a kill."""

    args: list[str]
    log: Path
    port: int
    kv_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    api_key: str | None = None
    starts: int = field(default=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180.0) -> Instance:
        self.starts += 1
        log = self.log.with_suffix(f".{self.starts}.log")
        with log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pyagent", "serve", *self.args],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while " at http://" not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pyagent serve {' '.join(self.args)} did not start:\n{log.read_text()}")
            time.sleep(0.1)
        return self

    def text(self) -> str:
        return "".join(p.read_text() for p in sorted(self.log.parent.glob(self.log.stem + ".*.log")))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def health(self) -> dict[str, object]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        reply = httpx.get(f"http://127.0.0.1:{self.port}/health", headers=headers, timeout=10)
        reply.raise_for_status()
        data: dict[str, object] = reply.json()
        return data

    def free_blocks(self) -> int:
        kv = self.health()["kv_cache"]
        assert isinstance(kv, dict)
        return int(kv["free_blocks"])


def prefill(model: Path, tmp: Path, *extra: str, home: Path, api_key_file: Path | None = None) -> Instance:
    port, kv_port = free_port(), free_port()
    args = ["--model", str(model), "--role", "prefill", "--port", str(port), "--kv-port", str(kv_port),
            "--home", str(home), "--store", ":memory:", *extra]
    if api_key_file is not None:
        args += ["--api-key-file", str(api_key_file)]
    return Instance(args, tmp / "prefill", port, kv_port)


def decode(model: Path, tmp: Path, kv_port: int, *extra: str, home: Path, api_key_file: Path | None = None,
           name: str = "decode") -> Instance:
    port = free_port()
    args = ["--model", str(model), "--role", "decode", "--port", str(port), "--kv-peer",
            f"tcp://127.0.0.1:{kv_port}", "--home", str(home), "--store", ":memory:", *extra]
    if api_key_file is not None:
        args += ["--api-key-file", str(api_key_file)]
    return Instance(args, tmp / name, port)


def single(model: Path, tmp: Path, *extra: str) -> Instance:
    port = free_port()
    return Instance(["--model", str(model), "--port", str(port), "--store", ":memory:", *extra], tmp / "single", port)


def router(tmp: Path, p: Instance, d: Instance) -> Instance:
    port = free_port()
    args = ["--role", "router", "--port", str(port), "--prefill", p.url, "--decode", d.url]
    return Instance(args, tmp / "router", port)


def fingerprint_in(text: str) -> bool:
    """A peer named in a log line: the 32-hex fingerprint of its public key."""
    return re.search(r"peer [0-9a-f]{32}", text) is not None
