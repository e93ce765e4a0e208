"""Must-show: three real nodes share an ``improve --swarm`` run; one is SIGKILLed mid-task.

Everything is real: three ``pyagent node`` processes advertising by mDNS on 127.0.0.1, CurveZMQ
with cross-trusted keys, ``pyagent improve --swarm`` on a git copy of the bundled sample project.
As soon as a node reports that it started a task, it is killed with SIGKILL. The run must still
finish every task exactly once (the killed node's task re-run elsewhere) and apply no change twice
(one commit per kept task, none repeated).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pyagent

SAMPLE = Path(pyagent.__file__).parent / "samples" / "messy_project"
FINAL = {"kept", "rolled_back", "failed", "skipped"}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def _key(cmd: list[str], home: Path) -> str:
    out = subprocess.run([*cmd, "node", "--show-key", "--home", str(home)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_improve_swarm_survives_a_sigkilled_node(
    pyagent_cmd: list[str], clean_env: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(SAMPLE, project)
    _git(project, "init", "-q", "-b", "main")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "init")

    tag = uuid.uuid4().hex[:6]  # unique names: other test runs may share the LAN
    names = [f"ann-{tag}", f"bob-{tag}", f"cyd-{tag}"]
    keys = {n: _key(pyagent_cmd, tmp_path / n) for n in [*names, "origin"]}
    for n in names:  # the origin trusts each node, each node trusts the origin
        subprocess.run([*pyagent_cmd, "trust", "--home", str(tmp_path / "origin"), "--", keys[n]], check=True, capture_output=True)
        subprocess.run([*pyagent_cmd, "trust", "--home", str(tmp_path / n), "--", keys["origin"]], check=True, capture_output=True)

    lines: queue.Queue[tuple[str, str]] = queue.Queue()
    logs: dict[str, list[str]] = {n: [] for n in names}
    procs: dict[str, subprocess.Popen[str]] = {}

    def pump(name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            logs[name].append(line)
            lines.put((name, line))

    improve: subprocess.Popen[str] | None = None
    try:
        for n in names:
            procs[n] = subprocess.Popen(
                [*pyagent_cmd, "node", "--name", n, "--home", str(tmp_path / n), "--slots", "1"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=clean_env,
            )
            threading.Thread(target=pump, args=(n, procs[n]), daemon=True).start()

        # 1) the three nodes find each other within 5 s of the last one coming up
        seen: dict[str, set[str]] = {n: set() for n in names}
        up: dict[str, float] = {}
        deadline = time.monotonic() + 30
        while any(not seen[n] >= set(names) - {n} for n in names) and time.monotonic() < deadline:
            try:
                name, line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if "listening on" in line:
                up[name] = time.monotonic()
            elif line.startswith("peer added: "):
                seen[name].add(line.split()[2])
        assert all(seen[n] >= set(names) - {n} for n in names), seen
        assert time.monotonic() - max(up.values()) < 5.0

        # 2) an improve --swarm run over them; kill the first node that starts a task
        env = {**clean_env, "PYAGENT_NODE_HOME": str(tmp_path / "origin")}
        improve = subprocess.Popen(
            [*pyagent_cmd, "improve", str(project), "--swarm", "--concurrency", "3", "--max-tasks", "5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        improve_out: list[str] = []
        threading.Thread(target=lambda: improve_out.extend(improve.stdout or []), daemon=True).start()
        victim = victim_task = None
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline and improve.poll() is None:
            try:
                name, line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("task started: "):
                victim, victim_task = name, line.split()[2]
                procs[name].send_signal(signal.SIGKILL)
        assert victim is not None, f"no node ever started a task: {''.join(improve_out)[-3000:]}"
        assert improve.wait(timeout=300) == 0, "".join(improve_out)[-3000:]
        assert procs[victim].wait(timeout=10) == -signal.SIGKILL
    finally:
        if improve is not None and improve.poll() is None:
            improve.kill()
            improve.wait()
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    survivors = [n for n in names if n != victim]
    assert all(procs[n].returncode == 0 for n in survivors), {n: procs[n].returncode for n in survivors}

    report_path = next((project / ".pyagent" / "reports").glob("*/report.json"))
    report = json.loads(report_path.read_text())
    tasks = {t["id"]: t for t in report["tasks"]}
    assert len(tasks) == len(report["tasks"]) >= 2  # each task reported once
    assert all(t["status"] in FINAL for t in tasks.values())

    # every task finished once: the victim's task was re-run elsewhere, not lost or failed
    redo = tasks[victim_task]
    assert redo["status"] != "failed", redo
    assert redo["verification"].get("node") != victim
    # work really was shared: surviving peers ran tasks, under the origin's one lineage
    remote = [t for t in tasks.values() if t["verification"].get("node") in survivors]
    assert remote, [t["verification"].get("node") for t in tasks.values()]
    for t in remote:
        assert t["verification"]["remote"]["root_task_id"] == t["lineage"][0]
        assert t["verification"]["remote"]["lineage"] == t["lineage"]

    swarm_note = next(n for n in report["notes"] if n.startswith("swarm: "))
    assert int(swarm_note.split(" locally, ")[1].split()[0]) >= 1, swarm_note  # the victim's task was re-routed

    # no change applied twice: one commit per kept task, no task committed twice
    branch = report["branch"]
    kept = {t["id"] for t in tasks.values() if t["status"] == "kept"}
    committed: list[str] = []
    if kept:
        messages = _git(project, "log", "--format=%B%x00", f"{report['base_commit']}..{branch}").split("\x00")
        for msg in messages:
            for word in msg.replace(",", " ").split():
                if word in tasks:
                    committed.append(word)
    assert sorted(committed) == sorted(kept)
    # the killed node's worker noticed it was orphaned and killed its own process group
    marker = f"PYAGENT_NODE_PID={procs[victim].pid}".encode()
    for _ in range(50):
        if not _processes_with_env(marker):
            break
        time.sleep(0.1)
    assert _processes_with_env(marker) == []


def _processes_with_env(marker: bytes) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    found.append(int(pid))
            except OSError:
                continue
    return found
