"""Three real ``pyagent node`` processes on 127.0.0.1 find each other by mDNS within 5 s."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
import uuid
from pathlib import Path


def test_three_nodes_find_each_other_within_5s(
    pyagent_cmd: list[str], clean_env: dict[str, str], tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]  # unique names: other test runs may share the LAN
    names = [f"ann-{tag}", f"bob-{tag}", f"cyd-{tag}"]
    lines: queue.Queue[tuple[str, str]] = queue.Queue()
    procs: dict[str, subprocess.Popen[str]] = {}

    def pump(name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put((name, line))

    try:
        for name in names:
            proc = subprocess.Popen(
                [*pyagent_cmd, "node", "--name", name, "--home", str(tmp_path / name), "--interface", "127.0.0.1"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=clean_env,
            )
            procs[name] = proc
            threading.Thread(target=pump, args=(name, proc), daemon=True).start()
        seen: dict[str, set[str]] = {n: set() for n in names}
        started: dict[str, float] = {}
        deadline = time.monotonic() + 30
        while any(len(s) < 2 for s in seen.values()) and time.monotonic() < deadline:
            try:
                name, line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if "listening on" in line:
                started[name] = time.monotonic()
            elif line.startswith("peer added: ") and line.split()[2] in names:
                # nodes of other runs on this host (or killed ones whose mDNS records have not
                # expired yet) may show up too; only this run's nodes are counted
                seen[name].add(line.split()[2])
        assert seen == {n: set(names) - {n} for n in names}
        # discovery time, counted from the moment the last node was up
        assert time.monotonic() - max(started.values()) < 5.0
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                assert proc.wait(timeout=10) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
