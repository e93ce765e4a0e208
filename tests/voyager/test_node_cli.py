"""``pyagent node``, ``pyagent peers`` and ``pyagent trust`` as real subprocesses on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from pyagent.voyager.node import NodeConfig, VoyagerNode
from tests.voyager.conftest import run


def start_node(cmd: list[str], env: dict[str, str], home: Path, name: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*cmd, "node", "--name", name, "--home", str(home), "--interface", "127.0.0.1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """Read stdout lines until one contains ``needle`` (bounded by ``timeout``)."""
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if needle in line:
                done.set()
                return
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), f"no {needle!r} within {timeout}s: {lines}"
    assert any(needle in line for line in lines), lines
    return lines


def test_show_key_is_stable_and_trust_accepts_it(
    pyagent_cmd: list[str], clean_env: dict[str, str], tmp_path: Path
) -> None:
    show = [*pyagent_cmd, "node", "--show-key", "--home", str(tmp_path / "a")]
    key = subprocess.run(show, capture_output=True, text=True, check=True, env=clean_env).stdout.strip()
    assert len(key) == 40
    assert subprocess.run(show, capture_output=True, text=True, check=True, env=clean_env).stdout.strip() == key
    assert (tmp_path / "a" / "node.key_secret").stat().st_mode & 0o077 == 0
    trust = [*pyagent_cmd, "trust", "--home", str(tmp_path / "b"), "--", key]
    out = subprocess.run(trust, capture_output=True, text=True, env=clean_env)
    assert out.returncode == 0 and out.stdout.startswith("trusted: "), out.stderr
    again = subprocess.run(trust, capture_output=True, text=True, env=clean_env)
    assert again.stdout.startswith("already trusted"), again.stdout
    assert (tmp_path / "b" / "trusted_keys").read_text().split() == [key]


def test_trust_takes_a_key_that_starts_with_a_dash(
    pyagent_cmd: list[str], clean_env: dict[str, str], tmp_path: Path
) -> None:
    import zmq

    key = ""
    while not key.startswith("-"):  # about 1 in 85 Z85 keys starts with '-'
        key = zmq.curve_keypair()[0].decode()
    out = subprocess.run(
        [*pyagent_cmd, "trust", "--home", str(tmp_path), "--", key], capture_output=True, text=True, env=clean_env
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "trusted_keys").read_text().split() == [key]


def test_trust_rejects_a_bad_key_without_traceback(
    pyagent_cmd: list[str], clean_env: dict[str, str], tmp_path: Path
) -> None:
    out = subprocess.run(
        [*pyagent_cmd, "trust", "not-a-key", "--home", str(tmp_path)], capture_output=True, text=True, env=clean_env
    )
    assert out.returncode == 2
    assert "not a CurveZMQ public key" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "trusted_keys").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--port", "70000"], "not a TCP port"), (["--slots", "0"], "at least 1"), (["--interface", "10.255.255.1"], "cannot start")],
)
def test_node_bad_arguments_are_clear_errors(
    pyagent_cmd: list[str], clean_env: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    out = subprocess.run(
        [*pyagent_cmd, "node", "--home", str(tmp_path), *args], capture_output=True, text=True, env=clean_env, timeout=30
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_peers_rejects_bad_timeout(pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    out = subprocess.run([*pyagent_cmd, "peers", "--timeout", "-1"], capture_output=True, text=True, env=clean_env)
    assert out.returncode == 2 and "--timeout" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_node_is_listed_by_peers_and_stops_on_signal_within_2s(
    pyagent_cmd: list[str], clean_env: dict[str, str], tmp_path: Path, sig: signal.Signals
) -> None:
    home = tmp_path / "home"
    key = subprocess.run(
        [*pyagent_cmd, "node", "--show-key", "--home", str(home)], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run([*pyagent_cmd, "trust", "--home", str(tmp_path / "viewer"), "--", key], check=True, capture_output=True)
    viewer_key = subprocess.run(  # the node trusts the viewer: "trusted" needs a completed CURVE handshake
        [*pyagent_cmd, "node", "--show-key", "--home", str(tmp_path / "viewer")], capture_output=True, text=True,
        check=True,
    ).stdout.strip()
    subprocess.run([*pyagent_cmd, "trust", "--home", str(home), "--", viewer_key], check=True, capture_output=True)
    name = f"sig{sig.value}-{uuid.uuid4().hex[:6]}"  # unique: other test runs may share the LAN
    proc = start_node(pyagent_cmd, clean_env, home, name, "--slots", "3")
    try:
        wait_line(proc, "listening on", 20)
        out = subprocess.run(
            [*pyagent_cmd, "peers", "--json", "--timeout", "2", "--home", str(tmp_path / "viewer")],
            capture_output=True,
            text=True,
            env=clean_env,
            timeout=30,
        )
        peers = [p for p in json.loads(out.stdout) if p["name"] == name]
        assert len(peers) == 1, out.stdout
        assert peers[0]["address"] == "127.0.0.1" and peers[0]["slots"] == 3 and peers[0]["trusted"] is True
        assert isinstance(peers[0]["port"], int) and peers[0]["port"] > 0
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert elapsed < 2.0, f"stopping took {elapsed:.2f}s"
    # it said goodbye on mDNS: a fresh browse no longer finds it
    out = subprocess.run(
        [*pyagent_cmd, "peers", "--json", "--timeout", "1.5"], capture_output=True, text=True, env=clean_env, timeout=30
    )
    assert all(p["name"] != name for p in json.loads(out.stdout))


def test_node_in_process_leaves_no_threads_or_sockets(tmp_path: Path) -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def scenario() -> None:
        node = VoyagerNode(NodeConfig(name="inproc", home=str(tmp_path)))
        await node.start()
        task = asyncio.ensure_future(node.serve_forever(install_signals=False))
        await asyncio.sleep(0.3)
        node.stop()
        await task

    threads_before = set(threading.enumerate())
    fds_before = fds()
    run(scenario())
    assert set(threading.enumerate()) == threads_before
    assert fds() <= fds_before


def test_sigint_with_a_task_in_flight_hands_it_back_and_kills_the_worker(
    pyagent_cmd: list[str], clean_env: dict[str, str], tmp_path: Path
) -> None:
    """A real worker runs a task whose test baseline takes 60 s; SIGINT must still stop within 2 s."""
    import sys

    from pyagent.model.context import CascadeContext
    from pyagent.model.priority import AgentPriority
    from pyagent.model.task import AgentTask, content_hash
    from pyagent.voyager.home import NodeHome
    from pyagent.voyager.transport import RemoteError, VoyagerTransport

    node_home, client_home = NodeHome(tmp_path / "node"), NodeHome(tmp_path / "client")
    node_home.trust(client_home.keypair().public.decode())
    client_home.trust(node_home.keypair().public.decode())
    proc = start_node(pyagent_cmd, clean_env, tmp_path / "node", f"busy-{uuid.uuid4().hex[:6]}")
    lines = wait_line(proc, "listening on", 20)
    port = int(lines[-1].split("tcp://127.0.0.1:")[1].split(",")[0])
    source = b"x = 1\n"
    token = f"slow-test-{uuid.uuid4().hex}"
    task = AgentTask(
        id="t-slow",
        agent="lint",
        kind="lint",
        target="mod.py",
        files=("mod.py",),
        priority=AgentPriority.STANDARD,
        context=CascadeContext.root("improve", action="test:slow"),
        params={},
    )
    payload = {
        "task": task.to_wire(),
        "files": {"mod.py": source},
        "base_hashes": {"mod.py": content_hash(source)},
        "manifest": {"mod.py": content_hash(source)},
        "pipeline": {"test_cmd": f"{sys.executable} -c 'import time; time.sleep(60)' {token}"},
    }

    async def scenario() -> tuple[float, int | None]:
        client = VoyagerTransport(client_home.keypair(), heartbeat_interval=0.2, heartbeat_misses=50)
        await client.start(serve=False)
        client.connect("node", "127.0.0.1", port, node_home.keypair().public)
        try:
            await client.request("node", "blobs.put", {content_hash(source): source}, timeout=10)
            pending = asyncio.ensure_future(client.request("node", "task.run", payload, timeout=60))
            await asyncio.to_thread(wait_line, proc, "task started: t-slow", 20)
            for _ in range(300):  # the worker's test baseline (the 60 s command) is running
                if processes_matching(token.encode()):
                    break
                await asyncio.sleep(0.05)
            assert processes_matching(token.encode())
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            with pytest.raises(RemoteError) as err:
                await pending
            assert err.value.kind == "Cancelled"  # handed back, so the origin re-runs it elsewhere
            code = await asyncio.to_thread(proc.wait, 10)
            return time.monotonic() - t0, code
        finally:
            await client.close()

    try:
        elapsed, code = run(scenario(), timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0
    assert elapsed < 2.0, f"stopping took {elapsed:.2f}s"
    # the worker and the test command it ran were killed with the node's stop
    for _ in range(40):
        if not processes_matching(token.encode()):
            break
        time.sleep(0.05)
    assert processes_matching(token.encode()) == []
    assert processes_matching(f"PYAGENT_NODE_PID={proc.pid}".encode(), "environ") == []


def processes_matching(needle: bytes, what: str = "cmdline") -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                if needle in Path(f"/proc/{pid}/{what}").read_bytes().split(b"\0"):
                    found.append(int(pid))
            except OSError:
                continue
    return found


def test_running_node_drops_garbage_and_keeps_serving(
    pyagent_cmd: list[str], clean_env: dict[str, str], tmp_path: Path
) -> None:
    """Thousands of bad frames at a real ``pyagent node`` process; its own stats count them all."""
    import random
    import socket

    import zmq
    import zmq.asyncio

    from pyagent.voyager.envelope import Envelope
    from pyagent.voyager.home import NodeHome
    from pyagent.voyager.transport import VoyagerTransport

    node_home, client_home = NodeHome(tmp_path / "node"), NodeHome(tmp_path / "client")
    node_home.trust(client_home.keypair().public.decode())
    proc = start_node(pyagent_cmd, clean_env, tmp_path / "node", f"fuzz-{uuid.uuid4().hex[:6]}")
    lines = wait_line(proc, "listening on", 20)
    port = int(lines[-1].split("tcp://127.0.0.1:")[1].split(",")[0])
    rng = random.Random(66)
    server_key, kp = node_home.keypair().public, client_home.keypair()

    async def scenario() -> dict[str, int]:
        for _ in range(40):  # not even ZMTP
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(rng.randbytes(rng.randint(1, 400)))
        ctx = zmq.asyncio.Context()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.curve_serverkey, raw.curve_publickey, raw.curve_secretkey = server_key, kp.public, kp.secret
        raw.connect(f"tcp://127.0.0.1:{port}")
        valid = Envelope("node.info", None).encode()
        for i in range(2000):
            if i % 3 == 0:
                await raw.send(rng.randbytes(rng.randint(0, 200)))
            elif i % 3 == 1:
                await raw.send(valid[: rng.randint(0, len(valid) - 1)])
            else:
                await raw.send_multipart([valid, valid])
        client = VoyagerTransport(kp)
        await client.start(serve=False)
        client.connect("node", "127.0.0.1", port, server_key)
        try:
            for _ in range(100):
                info = await client.request("node", "node.info", None, timeout=10)
                if info["stats"]["dropped_malformed"] >= 2000 and info["stats"]["handshake_failed"] >= 30:
                    break
                await asyncio.sleep(0.05)
            stats: dict[str, int] = info["stats"]
            return stats
        finally:
            await client.close()
            raw.close(0)
            ctx.destroy(0)

    try:
        stats = run(scenario(), timeout=60)
        assert proc.poll() is None  # still serving
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
    assert stats["dropped_malformed"] == 2000
    assert stats["handshake_failed"] >= 30
    assert code == 0
