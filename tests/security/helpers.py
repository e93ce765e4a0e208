"""Shared pieces of the attack tests: run attacker code the way agents run project code."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

from pyagent.shell import Confinement, SecureShell, ShellResult


def attack(code: str, cwd: Path, *, confine: Confinement | None = None, timeout: float = 30.0,
           env: dict[str, str] | None = None) -> ShellResult:
    """Runs ``code`` in a fresh interpreter through SecureShell (confined by default), in ``cwd``."""
    shell = SecureShell(timeout=timeout, confine=confine)
    return shell.run_sync([sys.executable, "-c", code], cwd=cwd, env=env)


def active(result: ShellResult, name: str) -> bool:
    """Whether the protection ``name`` was reported active for the run (the tests name what stops them)."""
    rows = {p.name: p for p in result.protections}
    assert name in rows, f"{name!r} is not a protection the shell reports: {sorted(rows)}"
    return rows[name].active


class Listener:
    """A real listener (TCP on loopback or AF_UNIX) that records every connection and every byte sent to it."""

    def __init__(self, family: socket.AddressFamily, addr: str | tuple[str, int]) -> None:
        self.sock = socket.socket(family)
        self.sock.bind(addr)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()
        self.got = b""
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(2.0)
                try:
                    while data := conn.recv(4096):
                        self.got += data
                except TimeoutError:
                    pass

    def close(self) -> bytes:
        """Stops listening; returns everything received."""
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.got
