"""``pyagent recover PATH``: roll back a transaction that was killed before its commit point."""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "recover",
        help="roll back an interrupted transaction (a hot journal) so the tree is whole again",
        description="Finds the tree's rollback journal (.pyagent/vault/journal) left by a killed commit and "
        "puts every file back as it was before that commit. Safe to run at any time; idempotent.",
    )
    p.add_argument("path", help="the tree (or any path inside it)")
    p.add_argument("--lock-timeout", type=float, default=10.0, help="seconds to wait for a running transaction")
    return p


def run(args: argparse.Namespace) -> int:
    from pyagent.cli import CommandError
    from pyagent.state.errors import TransactionError
    from pyagent.state.recovery import recover, workspace_root

    if not os.path.exists(args.path):
        raise CommandError(f"no such file or directory: {args.path}")
    root = workspace_root(args.path)
    try:
        result = recover(root, lock_timeout=args.lock_timeout)
    except TransactionError as exc:
        raise CommandError(str(exc)) from exc
    if result is None:
        print(f"{root}: no interrupted transaction, nothing to do")
        return 0
    print(
        f"{root}: rolled back transaction {result.txid}: {len(result.restored)} file(s) restored, "
        f"{len(result.removed)} created file(s) removed"
    )
    for path in result.restored:
        print(f"  restored {path}")
    for path in result.removed:
        print(f"  removed  {path}")
    return 0
