"""``pyagent node``: run a Voyager node in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from pyagent.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "node",
        help="run a Voyager node: advertise by mDNS, accept work from trusted peers",
        description=(
            "Run a Voyager node in the foreground until Ctrl+C or SIGTERM. It advertises itself by mDNS and "
            "runs tasks sent by peers whose public keys were added with `pyagent trust`."
        ),
        epilog=(
            "A swarm in four steps: on each machine `pyagent node --show-key`; on every node "
            "`pyagent trust -- ORIGIN_KEY`; on the origin `pyagent trust -- NODE_KEY` for each node; run "
            "`pyagent node --interface LAN_IP` on the nodes and `pyagent improve PATH --swarm` on the origin "
            "(PYAGENT_SWARM_INTERFACE=LAN_IP; PYAGENT_NODE_HOME picks its key folder)."
        ),
    )
    p.add_argument("--name", help="node name shown to peers (default: host name)")
    p.add_argument("--interface", default="127.0.0.1", help="IPv4 address to bind and advertise (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="transport port (default: a free one)")
    p.add_argument("--home", help="node home folder with keys and trusted list (default ~/.pyagent/node)")
    p.add_argument("--slots", type=int, default=2, help="tasks run at once (default 2)")
    p.add_argument("--show-key", action="store_true", help="print this node's public key and exit")
    p.add_argument("--memory", metavar="STORE",
                   help="replicate this knowledge store with the trusted peers (a .db file, or a workspace "
                   "meaning WORKSPACE/.pyagent/memory.db) and answer fleet-wide memory queries")
    p.add_argument("--replicas", type=int, default=2, metavar="R",
                   help="with --memory: each item is kept on at least R live nodes (default 2)")
    p.add_argument("--memory-interval", type=float, default=0.5, metavar="S",
                   help="with --memory: seconds between replication rounds (default 0.5)")
    return p


def run(args: argparse.Namespace) -> int:
    from pyagent.voyager.home import HomeError, NodeHome
    from pyagent.voyager.loop import run as run_loop
    from pyagent.voyager.node import NodeConfig, VoyagerNode
    from pyagent.voyager.transport import TransportError

    if not 0 <= args.port < 65536:
        raise CommandError(f"--port {args.port} is not a TCP port (0-65535)")
    if args.slots < 1:
        raise CommandError("--slots must be at least 1")
    if args.replicas < 1:
        raise CommandError("--replicas must be at least 1")
    if not args.memory_interval > 0:
        raise CommandError("--memory-interval must be > 0")
    try:
        if args.show_key:
            print(NodeHome(args.home).keypair().public.decode())
            return 0
        config = NodeConfig(interface=args.interface, port=args.port, slots=args.slots, home=args.home)
        if args.name:
            config.name = args.name
        node = VoyagerNode(
            config,
            on_peer=lambda event, peer: print(
                f"peer {event}: {peer.name} {peer.address}:{peer.port} slots={peer.slots}", flush=True
            ),
            on_task=lambda event, task_id, detail: print(f"task {event}: {task_id} {detail}", flush=True),
        )
    except HomeError as exc:
        raise CommandError(str(exc)) from None
    memory = _attach_memory(args, node) if args.memory else None

    async def main() -> None:
        try:
            port = await node.start()
        except (TransportError, OSError) as exc:
            raise CommandError(f"cannot start the node on {args.interface}: {exc}") from None
        if memory is not None:
            replicator = asyncio.ensure_future(memory.run())
            node.on_close(lambda: (memory.stop(), replicator.cancel()))
            print(f"memory: {memory.replica.store.path if memory.replica else ''} replicated, "
                  f"R={memory.replicas}", flush=True)
        print(
            f"node {config.name} ({node.node_id[:8]}) listening on tcp://{args.interface}:{port}, "
            f"{config.slots} slots, key {node.keypair.public.decode()}",
            flush=True,
        )
        await node.serve_forever()
        print(f"node {config.name} stopped", flush=True)

    try:
        run_loop(main())
    finally:
        if memory is not None and memory.replica is not None:
            memory.replica.store.close()
    sys.stdout.flush()
    return 0


def _attach_memory(args: argparse.Namespace, node: Any) -> Any:
    """The node's holographic memory: its store's replica and the memory requests on its transport."""
    from pathlib import Path

    from pyagent.memory.errors import StoreError
    from pyagent.memory.replica import ReplicaStore
    from pyagent.memory.store import KnowledgeStore
    from pyagent.voyager.links import TrustedLinks
    from pyagent.voyager.replication import FleetMemory

    path = Path(args.memory)
    if path.is_dir():
        path = path / ".pyagent" / "memory.db"
    try:
        replica = ReplicaStore(KnowledgeStore(path), node.node_id)
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    memory = FleetMemory(
        node.transport,
        TrustedLinks(lambda: node.discovery, node.home, node.transport, self_id=node.node_id),
        node_id=node.node_id,
        name=node.config.name,
        replica=replica,
        replicas=args.replicas,
        interval=args.memory_interval,
        on_event=lambda line: print(line, flush=True),
    )
    memory.register()
    return memory
