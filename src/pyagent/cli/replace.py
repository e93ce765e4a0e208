"""``pyagent replace PATTERN REPLACEMENT PATH``: preview (default) or apply (--yes) a tree-wide replace."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

_COLORS = {"+": "\x1b[32m", "-": "\x1b[31m", "@": "\x1b[36m"}
_RESET = "\x1b[0m"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "replace",
        help="search and replace across a tree: preview as a diff, or apply all-or-nothing with --yes",
        description="Replaces PATTERN (a Rust regex; $1/${name} in REPLACEMENT expand captures) in every "
        "file under PATH that .gitignore does not exclude, in parallel. Without --yes it prints a unified "
        "diff and a summary and changes nothing. With --yes every file changes in ONE transaction: all or "
        "none, even if the process is killed (run `pyagent recover PATH` or any pyagent command afterwards). "
        "Binary and non-UTF-8 files are skipped and counted. Exit code: 0 done, 1 some files unreadable, "
        "2 bad input.",
    )
    p.add_argument("pattern", help="regex (Rust syntax) or, with --literal, plain text")
    p.add_argument("replacement", help="replacement; $1, ${name} expand captures unless --literal")
    p.add_argument("path", help="file or directory")
    p.add_argument("--literal", "-F", action="store_true", help="pattern and replacement are plain text")
    p.add_argument("--multiline", "-U", action="store_true",
                   help="let matches span lines ('.' matches newline); by default a match stays within a line")
    p.add_argument("--glob", "-g", action="append", default=[], metavar="G",
                   help="only files matching this glob (gitignore syntax, repeatable; '!G' excludes)")
    p.add_argument("--hidden", action="store_true", help="also search hidden files and directories")
    p.add_argument("--no-ignore", action="store_true", help="do not honour .gitignore")
    p.add_argument("--yes", "-y", action="store_true", help="apply the changes (one transaction)")
    p.add_argument("--diff", action="store_true", help="with --yes, also print the diff")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="colour the diff")
    p.add_argument("--lock-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for another transaction on the tree")
    return p


def _use_color(mode: str) -> bool:
    if mode != "auto":
        return mode == "always"
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _print_diff(text: str, color: bool) -> None:
    if not color:
        sys.stdout.write(text)
        return
    out = []
    for line in text.splitlines(keepends=True):
        code = _COLORS.get(line[:1])
        if line.startswith(("---", "+++")):
            code = "\x1b[1m"
        out.append(f"{code}{line.rstrip(chr(10))}{_RESET}\n" if code else line)
    sys.stdout.write("".join(out))


def run(args: argparse.Namespace) -> int:
    from pyagent.cli import CommandError
    from pyagent.state.errors import TransactionError
    from pyagent.state.replace import apply_replace, plan_replace

    show_diff = not args.yes or args.diff
    try:
        plan = plan_replace(args.path, args.pattern, args.replacement, literal=args.literal,
                            multiline=args.multiline, globs=args.glob, hidden=args.hidden,
                            no_ignore=args.no_ignore, diff=show_diff)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    except TransactionError as exc:
        raise CommandError(f"cannot recover the tree first: {exc}") from exc
    if show_diff:
        color = _use_color(args.color)
        for change in plan.changes:
            _print_diff(change.diff or "", color)
    for error in plan.errors:
        print(f"pyagent replace: skipped unreadable {error.path or '?'}: {error.reason}", file=sys.stderr)
    skipped = f"{len(plan.binary)} binary, {len(plan.non_utf8)} non-UTF-8"
    summary = (f"{plan.matches} match(es) in {plan.files} file(s) of {plan.scanned} scanned; "
               f"skipped {skipped}, {len(plan.errors)} unreadable")
    if not args.yes:
        print(f"{summary}. Nothing changed; run again with --yes to apply as one transaction.")
    elif plan.files == 0:
        print(f"{summary}. Nothing to change.")
    else:
        try:
            result = apply_replace(plan, lock_timeout=args.lock_timeout)
        except TransactionError as exc:
            raise CommandError(str(exc)) from exc
        print(f"{summary}. Applied to {len(result.changed)} file(s) in one transaction "
              f"(fsync {result.fsync_seconds * 1000:.0f} ms).")
    return 1 if plan.errors else 0
