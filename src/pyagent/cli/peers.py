"""``pyagent peers``: list the Voyager nodes found by mDNS."""

from __future__ import annotations

import argparse
import json

from pyagent.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "peers",
        help="list Voyager nodes found on the network by mDNS",
        description="Browse mDNS for Voyager nodes for a few seconds and list them.",
    )
    p.add_argument("--interface", default="127.0.0.1", help="IPv4 address to browse on (default 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--home", help="node home folder; marks peers whose key is trusted there")
    return p


def run(args: argparse.Namespace) -> int:
    from pyagent.voyager.home import NodeHome
    from pyagent.voyager.loop import run as run_loop
    from pyagent.voyager.peers import browse

    if not 0 < args.timeout <= 600:
        raise CommandError("--timeout must be between 0 and 600 seconds")
    trusted = set(NodeHome(args.home).trusted_by_fingerprint())
    try:
        peers = run_loop(browse(args.interface, args.timeout))
    except OSError as exc:
        raise CommandError(f"cannot browse mDNS on {args.interface}: {exc}") from None
    rows = [{**p.to_dict(), "trusted": p.fingerprint in trusted} for p in peers]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no peers found on {args.interface} within {args.timeout:g}s")
        return 0
    print(f"{'name':20} {'address':15} {'port':>5} {'slots':>5}  trusted  node id")
    for r in rows:
        print(
            f"{r['name']!s:20} {r['address']!s:15} {r['port']!s:>5} {r['slots']!s:>5}  "
            f"{'yes' if r['trusted'] else 'no':7}  {str(r['node_id'])[:8]}"
        )
    return 0
