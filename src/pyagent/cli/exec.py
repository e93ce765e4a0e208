"""``pyagent exec -- CMD ARGS...``: run a command exactly the way agents do (SecureShell)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "exec",
        help="run a command in PyAgent's sandboxed shell, streaming its output",
        description="Runs CMD without a shell, with an allow-listed environment (no API keys or tokens), "
        "resource limits and a whole-tree kill on timeout. Exits with the command's exit code, 124 on "
        "timeout, 127 when the command does not exist.",
    )
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="seconds before the tree is killed")
    p.add_argument("--cwd", default=None, metavar="DIR", help="working directory for the command")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="also pass this environment variable through (repeatable)")
    p.add_argument("--max-output", type=int, default=1 << 20, metavar="BYTES",
                   help="bytes of each stream kept in memory (head and tail)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run")
    return p


def run(args: argparse.Namespace) -> int:
    from pyagent.cli import CommandError
    from pyagent.shell.secure import CommandNotFoundError, SecureShell
    from pyagent.state.recovery import ensure_recovered

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CommandError("no command given; usage: pyagent exec [--timeout S] [--cwd DIR] -- CMD ARGS...")
    if args.timeout is not None and args.timeout <= 0:
        raise CommandError("--timeout must be a positive number of seconds")

    if args.cwd is not None and not os.path.isdir(args.cwd):
        raise CommandError(f"--cwd: no such directory: {args.cwd}")
    ensure_recovered(args.cwd or ".")  # the command must not see a half-applied transaction

    def show(stream: str, line: str) -> None:
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(line + "\n")
        out.flush()

    shell = SecureShell(env_allow=args.env, timeout=args.timeout, max_output_bytes=args.max_output)
    try:
        result = shell.run_sync(argv, cwd=args.cwd, on_line=show)
    except CommandNotFoundError as exc:
        print(f"pyagent exec: error: {exc}", file=sys.stderr)
        return 127
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from exc
    if result.timed_out:
        print(f"pyagent exec: timed out after {args.timeout:g} s; the command's process tree was killed",
              file=sys.stderr)
        return 124
    if result.exit_code is None:
        return 1
    if result.exit_code < 0:
        return 128 - result.exit_code
    return result.exit_code
