"""``pyagent undo PATH``: revert the last in-place `improve` run."""

from __future__ import annotations

import argparse
from typing import Any

from pyagent.cli import CommandError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "undo",
        help="revert the last in-place `improve` run on PATH",
        description=(
            "Restores every file the last in-place `pyagent improve` run changed, in one transaction. Refuses "
            "(changing nothing) when a file was edited after the run, unless --force."
        ),
    )
    p.add_argument("path", metavar="PATH", help="the project the run changed")
    p.add_argument("--force", action="store_true", help="restore files even if they changed after the run")
    return p


def run(args: argparse.Namespace) -> int:
    from pyagent.improve.undo import UndoError, undo_last_run

    try:
        result = undo_last_run(args.path, force=args.force)
    except UndoError as exc:
        raise CommandError(str(exc)) from exc
    print(f"undid run {result.run_id}: restored {len(result.restored)} file(s)")
    for path in result.restored:
        print(f"  {path}")
    return 0
