"""Holographic memory across three real ``pyagent node --memory`` processes on 127.0.0.1.

Real mDNS discovery, CurveZMQ-authenticated transports, SQLite stores on disk, SIGKILL.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from pyagent.health import CodeHealthAuditor
from pyagent.memory.fleet_knowledge import FleetKnowledge
from pyagent.memory.fleet_memory import StoreKnowledge
from pyagent.memory.replica import ReplicaStore
from pyagent.memory.report import fleet_summary
from pyagent.memory.store import KnowledgeStore
from pyagent.model.context import CascadeContext
from pyagent.model.knowledge import ChangeOutcome
from pyagent.model.task import content_hash
from pyagent.pipeline.planner import Candidate, plan_tasks
from pyagent.voyager.home import NodeHome
from pyagent.voyager.memory_client import FleetClient

pytestmark = pytest.mark.slow


class Fleet:
    """Three node processes, each with its own home (all trusting each other) and store."""

    def __init__(self, tmp: Path, cmd: list[str], env: dict[str, str]) -> None:
        self.tmp, self.cmd, self.env = tmp, cmd, env
        tag = uuid.uuid4().hex[:6]  # unique names: other runs may share the host
        self.names = [f"ann-{tag}", f"bob-{tag}", f"cyd-{tag}"]
        self.homes = {n: NodeHome(tmp / n / "home") for n in self.names}
        keys = [h.keypair().public.decode() for h in self.homes.values()]
        for home in self.homes.values():
            for key in keys:
                home.trust(key)
        self.stores = {n: tmp / n / "memory.db" for n in self.names}
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.lines: dict[str, queue.Queue[str]] = {}

    def start(self, name: str) -> None:
        proc = subprocess.Popen(
            [*self.cmd, "node", "--name", name, "--home", str(self.homes[name].path), "--interface", "127.0.0.1",
             "--memory", str(self.stores[name]), "--memory-interval", "0.3"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
        )
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        self.procs[name], self.lines[name] = proc, lines

    def wait_line(self, name: str, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines[name].get(timeout=0.2)
            except queue.Empty:
                assert self.procs[name].poll() is None, f"{name} exited with {self.procs[name].returncode}"
                continue
            if needle in line:
                return line
        raise AssertionError(f"{name} did not print {needle!r} within {timeout}s")

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)
        for name in self.names:
            self.wait_line(name, "listening on", 30)
        client = self.client(self.names[0])
        try:  # every node sees both others live
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                nodes, _ = client.statuses()
                if len(nodes) == 3 and all(len(n["peers"]) == 2 for n in nodes):
                    return
                time.sleep(0.3)
            raise AssertionError(f"the nodes did not all find each other: {nodes}")
        finally:
            client.close()

    def client(self, name: str) -> FleetClient:
        return FleetClient(self.homes[name], discovery_wait=5.0).start()

    def knowledge(self, name: str) -> StoreKnowledge:
        return StoreKnowledge(KnowledgeStore(self.stores[name]), remember_reasons=False)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def nodes(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]):  # type: ignore[no-untyped-def]
    fleet = Fleet(tmp_path, pyagent_cmd, clean_env)
    try:
        fleet.start_all()
        yield fleet
    finally:
        fleet.stop_all()


def _plan(root: Path, cands: list[Candidate], knowledge: object) -> object:
    audit = CodeHealthAuditor().audit_path(root)
    return plan_tasks(root, audit, cands, context=CascadeContext.root("improve"), knowledge=knowledge)  # type: ignore[arg-type]


def test_a_failure_on_a_vetoes_c_and_a_route_learned_on_b_orders_agents_on_a(nodes: Fleet, tmp_path: Path) -> None:
    ann, bob, cyd = nodes.names
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "mod.py").write_text("import os\n\n\ndef f(x):\n    return x\n")
    target_hash = content_hash((project / "pkg" / "mod.py").read_bytes())
    change = Candidate("ruff-fixer", "lint", "lint:F401", "pkg/mod.py")
    on_c = FleetKnowledge(nodes.knowledge(cyd), nodes.client(cyd))
    on_a = FleetKnowledge(nodes.knowledge(ann), nodes.client(ann))
    try:
        assert [t.params["action"] for t in _plan(project, [change], on_c).tasks] == ["lint:F401"]  # type: ignore[attr-defined]
        recorder = nodes.knowledge(ann)
        recorder.record_outcome(ChangeOutcome("ruff-fixer", "lint:F401", "lint", "pkg/mod.py", target_hash,
                                              "rolled_back", "tests failed: test_f"))
        recorder.close()
        started = time.monotonic()
        while True:
            plan = _plan(project, [change], on_c)
            if not plan.tasks:  # type: ignore[attr-defined]
                break
            assert time.monotonic() - started < 5.0, "C still plans a change A knows fails"
            time.sleep(0.1)
        vetoed = time.monotonic() - started
        assert plan.skipped[0].reason == "known to fail (memory): tests failed: test_f"  # type: ignore[attr-defined]
        print(f"failure recorded on {ann} vetoed the change on {cyd} after {vetoed:.2f}s")

        # routes: on B, agent "second" keeps its lint changes and "first" has them rolled back
        two = [Candidate("first", "lint", "lint:E711", "pkg/mod.py"), Candidate("second", "lint", "lint:E712",
                                                                                 "pkg/mod.py")]
        assert [t.agent for t in _plan(project, two, on_a).tasks] == ["first", "second"]  # type: ignore[attr-defined]
        learner = nodes.knowledge(bob)
        for n in range(3):
            learner.record_outcome(ChangeOutcome("second", "lint:E712", "lint", f"x{n}.py", "", "kept"))
            learner.record_outcome(ChangeOutcome("first", "lint:E711", "lint", f"x{n}.py", "", "failed", "broke"))
        learner.close()
        time.sleep(on_a.route_ttl)
        assert on_a.route_weight("second", "lint") > 1.0 > on_a.route_weight("first", "lint")
        assert [t.agent for t in _plan(project, two, on_a).tasks] == ["second", "first"]  # type: ignore[attr-defined]

        # once replicated, the failure outlives its author: with A killed, C still vetoes the change
        deadline = time.monotonic() + 30
        while True:
            st, _ = on_c.client.statuses()
            if len(st) == 3 and fleet_summary(st, [])["min_replication"] >= 2 and all(n["behind"] == 0 for n in st):
                break
            assert time.monotonic() < deadline, "the failure was not replicated"
            time.sleep(0.3)
        nodes.kill(ann)
        plan = _plan(project, [change], on_c)
        assert not plan.tasks and plan.skipped[0].reason.endswith("tests failed: test_f")  # type: ignore[attr-defined]
    finally:
        on_c.close()
        on_a.close()


def _fleet_state(client: FleetClient) -> tuple[set[str], dict[str, object], list[str]]:
    found = client.query("facts", {"namespace": "load"}, timeout=3.0)
    nodes, missing = client.statuses()
    return {row[0] for row in found.result}, fleet_summary(nodes, missing), list(found.missing)


def test_sigkill_of_any_node_loses_nothing_and_a_restart_fetches_only_missing_shards(
    nodes: Fleet, tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]
) -> None:
    expected: set[str] = set()
    for i, name in enumerate(nodes.names):
        k = nodes.knowledge(name)
        keys = [f"{name[:3]}-{j}" for j in range(300)]
        k.store.put_many("load", [(key, {"i": i, "j": j}) for j, key in enumerate(keys)])
        expected.update(keys)
        k.close()
    watcher = nodes.client(nodes.names[0])
    try:
        deadline = time.monotonic() + 30
        while True:
            keys, summary, _ = _fleet_state(watcher)
            if keys == expected and summary["min_replication"] >= 2 and len(summary["nodes"]) == 3:  # type: ignore[index,operator,arg-type]
                break
            assert time.monotonic() < deadline, f"never fully replicated: {summary}"
            time.sleep(0.5)
        # the CLI shows the same: every node's items, lag, replication factor
        env = {**clean_env, "PYAGENT_NODE_HOME": str(nodes.homes[nodes.names[0]].path)}
        out = subprocess.run([*pyagent_cmd, "memory", "status", "--fleet", "--json"], capture_output=True,
                             text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        shown = json.loads(out.stdout)
        assert sorted(n["name"] for n in shown["nodes"]) == sorted(nodes.names)
        assert shown["min_replication"] >= 2 and all(n["items"] > 0 for n in shown["nodes"])
        text = subprocess.run([*pyagent_cmd, "memory", "status", "--fleet"], capture_output=True, text=True,
                              env=env, timeout=60).stdout
        assert "replication factor: min" in text and all(n in text for n in nodes.names)
        print(text)

        for round_, victim in enumerate(nodes.names):
            survivors = [n for n in nodes.names if n != victim]
            observer = watcher if victim != nodes.names[0] else nodes.client(survivors[0])
            nodes.kill(victim)
            killed = time.monotonic()
            # every fact is still reachable, from the survivors alone
            keys, _, missing = _fleet_state(observer)
            assert keys == expected
            assert missing == [victim]  # the answer says who could not be asked
            while True:  # replication restored: every shard on both survivors
                keys, summary, _ = _fleet_state(observer)
                live = [n["name"] for n in summary["nodes"]]  # type: ignore[index]
                if sorted(live) == sorted(survivors) and summary["min_replication"] >= 2 and keys == expected:  # type: ignore[index,operator]
                    break
                assert time.monotonic() - killed < 30, f"replication not restored 30s after killing {victim}"
                time.sleep(0.5)
            restored = time.monotonic() - killed
            # new knowledge while the victim is away
            k = nodes.knowledge(survivors[0])
            fresh = [f"new{round_}-{j}" for j in range(10)]
            k.store.put_many("load", [(key, {"new": True}) for key in fresh])
            expected.update(fresh)
            k.close()
            # what the victim lacks: the shards whose hash on its disk differs from the survivors' copies
            while True:
                st, _ = observer.statuses()
                if all(n["behind"] == 0 for n in st) and fleet_summary(st, [])["min_replication"] >= 2:
                    break
                time.sleep(0.3)
            current = {int(sh): h for n in st for sh, h in n["hashes"]}
            on_disk = ReplicaStore(KnowledgeStore(nodes.stores[victim]), nodes.homes[victim].node_id())
            stale = {sh for sh, h in current.items() if on_disk.shard_hashes().get(sh) != h}
            on_disk.store.close()
            nodes.start(victim)
            line = nodes.wait_line(victim, "memory caught up", 60)
            deadline = time.monotonic() + 30
            while True:
                st, _ = observer.statuses()
                mine = next((n for n in st if n["name"] == victim), None)
                keys, summary, _ = _fleet_state(observer)
                if mine is not None and summary["min_replication"] >= 2 and keys == expected and mine["behind"] == 0:  # type: ignore[index,operator]
                    break
                assert time.monotonic() < deadline, f"{victim} did not catch up: {mine}"
                time.sleep(0.5)
            print(f"SIGKILL {victim}: replication restored in {restored:.1f}s; restart: {line.strip()}; "
                  f"status: fetched {mine['bytes_fetched']} of {mine['store_bytes']} bytes "
                  f"({mine['shards_fetched']} shards; {len(stale)} of {len(current)} differed from its disk)")
            assert 0 < mine["shards_fetched"] <= len(stale)  # only shards it lacked or held stale
            assert mine["bytes_fetched"] < mine["store_bytes"] / 4
            if observer is not watcher:
                observer.close()
    finally:
        watcher.close()
