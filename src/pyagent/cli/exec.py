"""``pyagent exec -- CMD ARGS...``: run a command exactly the way agents do (SecureShell, confined)."""

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
        "resource limits, a timeout and a whole-tree kill, confined on Linux (user, PID, mount and network "
        "namespaces; Landlock: write only the working directory and a private tmp, read only system and "
        "interpreter paths). Exits with the command's exit code, 124 on timeout, 127 when the command does "
        "not exist, 126 when --require-sandbox refuses.",
    )
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds before the tree is killed (default 600)")
    p.add_argument("--cwd", default=None, metavar="DIR", help="working directory for the command (writable)")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="also pass this environment variable through (repeatable)")
    p.add_argument("--max-output", type=int, default=1 << 20, metavar="BYTES",
                   help="bytes of each stream kept in memory (head and tail)")
    p.add_argument("--allow-network", action="store_true", help="let the command reach the network")
    p.add_argument("--allow-read", action="append", default=[], metavar="PATH",
                   help="also let the command read PATH (repeatable)")
    p.add_argument("--allow-write", action="append", default=[], metavar="PATH",
                   help="also let the command write PATH (repeatable)")
    p.add_argument("--memory", type=int, default=None, metavar="MIB", help="memory cap in MiB (default 1024)")
    p.add_argument("--require-sandbox", action="store_true",
                   help="refuse to run unless every protection can be set up on this machine")
    p.add_argument("--no-sandbox", action="store_true", help="run without confinement (trusted commands only)")
    p.add_argument("--explain", action="store_true",
                   help="print which protections are active for this command on this machine, then run it")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run")
    return p


def policy_from(args: argparse.Namespace) -> Any:
    from pyagent.cli import CommandError
    from pyagent.shell.confine import DEFAULT_MEMORY, Confinement

    if args.memory is not None and args.memory <= 0:
        raise CommandError("--memory must be a positive number of MiB")
    if args.no_sandbox and args.require_sandbox:
        raise CommandError("--no-sandbox and --require-sandbox contradict each other")
    base = Confinement.off() if args.no_sandbox else Confinement.default()
    return Confinement(
        enabled=base.enabled, allow_network=args.allow_network,
        memory=DEFAULT_MEMORY if args.memory is None else args.memory << 20,
        read_paths=tuple(os.path.abspath(p) for p in args.allow_read),
        write_paths=tuple(os.path.abspath(p) for p in args.allow_write), require=args.require_sandbox,
        freezer="signal",  # one command, never preempted: no freezer cgroup to make, join and remove
    )


def run(args: argparse.Namespace) -> int:
    from pyagent.cli import CommandError
    from pyagent.shell.confine import DEFAULT_TIMEOUT, SandboxUnavailableError, format_table
    from pyagent.shell.secure import CommandNotFoundError, SecureShell
    from pyagent.state.recovery import ensure_recovered

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CommandError("no command given; usage: pyagent exec [--timeout S] [--cwd DIR] -- CMD ARGS...")
    if args.timeout is not None and args.timeout <= 0:
        raise CommandError("--timeout must be a positive number of seconds")
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout

    if args.cwd is not None and not os.path.isdir(args.cwd):
        raise CommandError(f"--cwd: no such directory: {args.cwd}")
    ensure_recovered(args.cwd or ".")  # the command must not see a half-applied transaction

    def show(stream: str, line: str) -> None:
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(line + "\n")
        out.flush()

    shell = SecureShell(env_allow=args.env, timeout=timeout, max_output_bytes=args.max_output,
                        confine=policy_from(args))
    try:
        result = shell.run_sync(argv, cwd=args.cwd, on_line=show)
    except CommandNotFoundError as exc:
        print(f"pyagent exec: error: {exc}", file=sys.stderr)
        return 127
    except SandboxUnavailableError as exc:
        print(f"pyagent exec: {exc}", file=sys.stderr)
        return 126
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from exc
    if args.explain:
        print("pyagent exec: sandbox for this command:\n" + format_table(result.protections), file=sys.stderr)
    if result.timed_out:
        print(f"pyagent exec: timed out after {timeout:g} s; the command's process tree was killed",
              file=sys.stderr)
        return 124
    if result.exit_code is None:
        return 1
    if result.exit_code < 0:
        return 128 - result.exit_code
    return result.exit_code
