"""``pyagent peers``: list the Voyager nodes found by mDNS."""

from __future__ import annotations

import argparse
import json

from pyagent.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "peers",
        help="list Voyager nodes found on the network by mDNS",
        description="Browse mDNS for Voyager nodes for a few seconds and list them. A peer advertising a "
        "trusted key's fingerprint is shown as trusted only after an authenticated handshake with that key; "
        "otherwise UNVERIFIED (a forged advertisement copies name and fingerprint, never the secret key).",
    )
    p.add_argument("--interface", default="127.0.0.1", help="IPv4 address to browse on (default 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--home", help="node home folder (keys, trusted list); a peer is trusted only after it proves, "
                   "in a CurveZMQ handshake, that it holds the trusted key it advertises")
    return p


def run(args: argparse.Namespace) -> int:
    from pyagent.voyager.home import NodeHome
    from pyagent.voyager.loop import run as run_loop
    from pyagent.voyager.peers import browse

    if not 0 < args.timeout <= 600:
        raise CommandError("--timeout must be between 0 and 600 seconds")
    try:
        peers = run_loop(browse(args.interface, args.timeout, NodeHome(args.home)))
    except OSError as exc:
        raise CommandError(f"cannot browse mDNS on {args.interface}: {exc}") from None
    rows = [
        {**p.info.to_dict(), "trusted": p.trusted, "verified": p.verified, "key_listed": p.key_listed}
        for p in peers
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no peers found on {args.interface} within {args.timeout:g}s")
        return 0
    print(f"{'name':20} {'address':15} {'port':>5} {'slots':>5}  trusted     node id")
    for r in rows:
        print(
            f"{r['name']!s:20} {r['address']!s:15} {r['port']!s:>5} {r['slots']!s:>5}  "
            f"{'yes' if r['trusted'] else ('UNVERIFIED' if r['key_listed'] else 'no'):10}  {str(r['node_id'])[:8]}"
        )
    return 0
