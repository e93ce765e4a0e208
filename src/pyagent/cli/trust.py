"""``pyagent trust KEY``: allow the node with this public key to submit work (and receive ours)."""

from __future__ import annotations

import argparse

from pyagent.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "trust",
        help="trust a Voyager node's public key",
        description=(
            "Add a peer's CurveZMQ public key (printed by `pyagent node --show-key` on that machine) to this "
            "node's trusted list. Only trusted keys may submit work, and work is only sent to trusted peers. "
            "Z85 keys may start with '-': write `pyagent trust -- KEY` so the key is not read as an option."
        ),
    )
    p.add_argument("key", help="the peer's public key (40 Z85 characters)")
    p.add_argument("--home", help="node home folder (default ~/.pyagent/node)")
    return p


def run(args: argparse.Namespace) -> int:
    from pyagent.voyager.home import HomeError, NodeHome, fingerprint, validate_key

    home = NodeHome(args.home)
    try:
        added = home.trust(args.key)
        fp = fingerprint(validate_key(args.key))
    except (HomeError, OSError) as exc:
        raise CommandError(str(exc)) from None
    print(f"{'trusted' if added else 'already trusted'}: {args.key.strip()} (fingerprint {fp})")
    return 0
