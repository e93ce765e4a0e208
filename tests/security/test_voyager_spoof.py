"""Attack: on the LAN, advertise by mDNS a node's name and key fingerprint (both public) with your own
address, hoping to be listed as trusted and sent tasks (the project's files, the task's context).

Before, the advertisement alone made it ``"trusted": true`` and the swarm would try it first.
Protection: ``PeerLink.verified`` — a peer counts as trusted only once it answered over a CurveZMQ link
made with the key it claims, which needs that key's secret; ``pyagent peers`` shows the forgery as
unverified and ``SwarmExecutor`` never sends it anything.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import uuid
from pathlib import Path

import zmq
import zmq.asyncio

from pyagent.model.context import CascadeContext
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask, ChangeSet
from pyagent.voyager.discovery import DiscoveryNode
from pyagent.voyager.home import NodeHome, fingerprint
from pyagent.voyager.swarm import SwarmExecutor, SwarmStats
from tests.voyager.test_node_cli import start_node, wait_line


class Forger:
    """A real CurveZMQ ROUTER with its own key pair, advertised under a real node's name and fingerprint."""

    def __init__(self, name: str, claimed_fingerprint: str) -> None:
        self.name, self.claimed = name, claimed_fingerprint
        self.received = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        ctx = zmq.asyncio.Context()
        public, secret = zmq.curve_keypair()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.port = sock.bind_to_random_port("tcp://127.0.0.1")
        disc = DiscoveryNode(node_id=uuid.uuid4().hex, name=self.name, port=self.port,
                             fingerprint=self.claimed, slots=8, capacity=8, interfaces=["127.0.0.1"])
        await disc.start()
        self._ready.set()
        try:
            while not self._stop.is_set():
                if await sock.poll(50):
                    await sock.recv_multipart()
                    self.received += 1
        finally:
            await disc.close()
            sock.close(0)
            ctx.term()

    def __enter__(self) -> Forger:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_a_forged_advertisement_is_unverified_and_never_gets_a_task(
    pyagent_cmd: list[str], clean_env: dict[str, str], tmp_path: Path
) -> None:
    node_home, origin = NodeHome(tmp_path / "node"), NodeHome(tmp_path / "origin")
    node_home.trust(origin.keypair().public.decode())
    origin.trust(node_home.keypair().public.decode())
    name = f"real-{uuid.uuid4().hex[:6]}"
    node = start_node(pyagent_cmd, clean_env, tmp_path / "node", name, "--slots", "2")
    try:
        lines = wait_line(node, "listening on", 20)
        port = int(lines[-1].split("tcp://127.0.0.1:")[1].split(",")[0])
        with Forger(name, fingerprint(node_home.keypair().public)) as forger:
            out = subprocess.run(
                [*pyagent_cmd, "peers", "--json", "--timeout", "4", "--home", str(tmp_path / "origin")],
                capture_output=True, text=True, env=clean_env, timeout=60,
            )
            rows = {r["port"]: r for r in json.loads(out.stdout) if r["name"] == name}
            assert set(rows) == {port, forger.port}, out.stdout
            assert rows[port]["trusted"] is True and rows[port]["verified"] is True, out.stdout
            fake = rows[forger.port]
            assert fake["trusted"] is False and fake["verified"] is False and fake["key_listed"] is True
            assert fake["fingerprint"] == rows[port]["fingerprint"]  # the copy is perfect; the key is not

            project = tmp_path / "project"
            project.mkdir()
            (project / "mod.py").write_text("import os\nx = 1\n")
            task = AgentTask(id="t-spoof", agent="lint", kind="lint", target="mod.py", files=("mod.py",),
                             priority=AgentPriority.STANDARD, context=CascadeContext.root("improve", action="lint:F401"),
                             params={"rule": "F401", "message": "unused import"})

            async def scenario() -> tuple[ChangeSet, SwarmStats]:
                async with SwarmExecutor(project, home=origin, discovery_wait=10) as swarm:
                    change = await swarm.execute(task, {"mod.py": (project / "mod.py").read_bytes()})
                    return change, swarm.stats

            change, stats = asyncio.run(asyncio.wait_for(scenario(), 120))
            assert stats.remote == {name: 1} and stats.local == 0  # it ran on a peer called ``name`` ...
            # ... the first one tried (the forgery, advertising 8 free slots to the real node's 2, would
            # rank first if it were a candidate: its link never completes, the task would sit there
            # until the heartbeats gave up and be re-routed)
            assert stats.rerouted == 0 and stats.failures == []
            assert change.task_id == "t-spoof"
            assert forger.received == 0  # ... and that peer was the real one: the forger got no frame at all
    finally:
        node.terminate()
        node.wait(10)
