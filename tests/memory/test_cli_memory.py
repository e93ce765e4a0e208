"""`pyagent memory ...` as a real subprocess on a real store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pyagent.memory import KnowledgeStore
from pyagent.memory.fleet_memory import StoreKnowledge
from pyagent.model.knowledge import ChangeOutcome


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    knowledge = StoreKnowledge.open(tmp_path, snapshot_every=None)
    for i in range(3):
        knowledge.record_outcome(ChangeOutcome("ruff", "fix:F401", "lint", f"pkg/m{i}.py", f"h{i}",
                                               "rolled_back", f"tests failed: test_m{i} ImportError", ("r", f"t{i}")))
    knowledge.record_outcome(ChangeOutcome("ruff", "fix:E711", "lint", "pkg/x.py", "hx", "kept"))
    knowledge.store.put("notes", "blob", {"b": b"\x00\x01"})
    knowledge.close()
    return tmp_path


def _run(cmd: list[str], *args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, "memory", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def test_stats_query_export(workspace: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    out = _run(pyagent_cmd, "stats", "--json", cwd=workspace, env=clean_env)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["counts"] == {"facts": 5, "edges": 4, "docs": 3}
    assert stats["namespaces"] == {"notes": 1, "pyagent.failures": 3, "pyagent.routes": 1}
    out = _run(pyagent_cmd, "query", "pyagent.failures", "h1", "--json", "--store", str(workspace),
               cwd=workspace.parent, env=clean_env)
    [fact] = json.loads(out.stdout)
    assert fact["value"]["reason"] == "tests failed: test_m1 ImportError" and fact["provenance"] == ["r", "t1"]
    out = _run(pyagent_cmd, "query", "--similar", "ImportError in test_m2", "-k", "1", cwd=workspace, env=clean_env)
    assert "pkg/m2.py" in out.stdout, out.stderr
    out = _run(pyagent_cmd, "query", "--path", "agent:ruff", "file:pkg/x.py", cwd=workspace, env=clean_env)
    assert out.stdout.strip() == "agent:ruff -kept-> file:pkg/x.py"
    out = _run(pyagent_cmd, "query", "--neighbours", "file:pkg/m0.py", "--json", cwd=workspace, env=clean_env)
    assert [e["predicate"] for e in json.loads(out.stdout)] == ["rolled_back"]
    out = _run(pyagent_cmd, "export", "-o", "all.jsonl", cwd=workspace, env=clean_env)
    lines = [json.loads(line) for line in (workspace / "all.jsonl").read_text().splitlines()]
    assert [r["type"] for r in lines].count("fact") == 5
    assert {"type": "fact", "key": "blob"}.items() <= lines[0].items()
    assert lines[0]["value"] == {"b": {"$base64": "AAE="}}


def test_snapshot_verify_restore_prune(workspace: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    out = _run(pyagent_cmd, "snapshot", "snap", "--json", cwd=workspace, env=clean_env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["written"] == 3
    again = json.loads(_run(pyagent_cmd, "snapshot", "snap", "--json", cwd=workspace, env=clean_env).stdout)
    assert (again["written"], again["reused"]) == (0, 3)
    assert "OK, 3 shards verified" in _run(pyagent_cmd, "snapshot", "snap", "--verify", cwd=workspace,
                                           env=clean_env).stdout
    refused = _run(pyagent_cmd, "restore", "snap", cwd=workspace, env=clean_env)
    assert refused.returncode == 2 and "refusing to restore over" in refused.stderr
    out = _run(pyagent_cmd, "restore", "snap", "--to", "copy.db", cwd=workspace, env=clean_env)
    assert out.returncode == 0, out.stderr
    with KnowledgeStore(workspace / "copy.db") as copy:
        assert copy.counts() == {"facts": 5, "edges": 4, "docs": 3}
    shard = next((workspace / "snap" / "shards").iterdir())
    shard.write_bytes(shard.read_bytes()[:-1])
    bad = _run(pyagent_cmd, "restore", "snap", "--to", "other.db", cwd=workspace, env=clean_env)
    assert bad.returncode == 2 and shard.name in bad.stderr and "Traceback" not in bad.stderr
    assert not (workspace / "other.db").exists()
    dry = json.loads(_run(pyagent_cmd, "prune", "--dry-run", "--threshold", "0.6", "--json", cwd=workspace,
                          env=clean_env).stdout)
    # the ruff/lint route: three failures (1.0 -> 0.5 -> 0.25 -> floor 0.2), then a success (+0.1) = 0.3
    assert (dry["facts"], dry["dry_run"]) == (1, True)
    pruned = json.loads(_run(pyagent_cmd, "prune", "--threshold", "0.6", "--json", cwd=workspace,
                             env=clean_env).stdout)
    assert pruned["facts"] == 1
    stats = json.loads(_run(pyagent_cmd, "stats", "--json", cwd=workspace, env=clean_env).stdout)
    assert stats["counts"]["facts"] == 4 and stats["namespaces"].get("pyagent.routes") is None and stats["pruning"]["threshold"] == 0.2  # not saved without --save


def test_user_errors_exit_2_without_traceback(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 50)
    cases = [
        ("stats",),
        ("stats", "--store", "junk.db"),
        ("query",),
        ("query", "ns", "--similar", "x"),
        ("restore", "nowhere", "--to", "x.db"),
        ("snapshot", "nowhere", "--verify"),
    ]
    for args in cases:
        out = _run(pyagent_cmd, *args, cwd=tmp_path, env=clean_env)
        assert out.returncode == 2, (args, out.stderr)
        assert "Traceback" not in out.stderr and "error:" in out.stderr


def test_status_fleet_with_no_node_says_how_to_start_one(
    tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]
) -> None:
    out = _run(pyagent_cmd, "status", "--fleet", "--home", str(tmp_path / "home"), "--wait", "0.5",
               cwd=tmp_path, env=clean_env)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "no trusted node with memory answered" in out.stderr and "pyagent node --memory" in out.stderr


def test_node_memory_options_are_checked(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    for args, message in ((["--replicas", "0"], "--replicas must be at least 1"),
                          (["--memory-interval", "0"], "--memory-interval must be > 0")):
        out = subprocess.run([*pyagent_cmd, "node", "--home", str(tmp_path / "h"), "--memory", str(tmp_path),
                              *args], capture_output=True, text=True, env=clean_env, timeout=60)
        assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    out = subprocess.run([*pyagent_cmd, "node", "--home", str(tmp_path / "h"), "--memory", str(tmp_path / "junk.db")],
                         capture_output=True, text=True, env=clean_env, timeout=60)
    assert out.returncode != 0 and "not a PyAgent knowledge store" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "junk.db").read_bytes() == b"not a database at all" * 100  # bad input loses nothing
