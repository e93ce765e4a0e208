"""The ``pyagent`` command line.

Each subcommand lives in its own module under ``pyagent.cli`` with two functions:
``add_parser(subparsers)`` to declare its arguments and ``run(args) -> int`` to do the work.
Command modules import their heavy dependencies inside ``run`` so that ``pyagent --help``
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pyagent import __version__

# Subcommand modules, in the order --help lists them. Each component adds its own.
# Keep one anchor comment per component so parallel work merges without conflicts.
COMMANDS: list[str] = [
    # -- main job
    "demo",
    "improve",
    "undo",
    # -- health
    "audit",

    # -- state and shell
    "replace",
    "recover",
    "exec",
    "doctor",

    # -- memory
    "memory",

    # -- voyager
    "node",
    "peers",
    "trust",

    # -- inference
    "generate",
    "model",

    # -- server
    "serve",

]


class CommandError(Exception):
    """An error the user can fix; printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyagent",
        description=(
            "PyAgent improves Python code bases with a swarm of agents. Every change is audited, "
            "applied as one transaction, verified by the project's own tests, and kept or rolled back "
            "on measured evidence."
        ),
    )
    parser.add_argument("--version", action="version", version=f"pyagent {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"pyagent.cli.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pyagent.shell.confine import make_nondumpable

    make_nondumpable()  # the keys in our environment stay out of reach of same-uid processes
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        code: int = args._run(args)
    except CommandError as exc:
        print(f"pyagent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyagent {args.command}: interrupted", file=sys.stderr)
        return 130
    return code
