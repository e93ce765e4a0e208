"""``pyagent audit PATH``: code-health audit as a table, JSON or HTML, with CI gates."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.cli import CommandError

if TYPE_CHECKING:
    from pyagent.health.auditor import AuditReport

#: Trees with at least this many files get a progress bar (on a terminal only).
PROGRESS_MIN_FILES = 500


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "audit",
        help="code-health audit: complexity, maintainability index, Halstead and line metrics",
        description=(
            "Audit every Python file under PATH (.gitignore honoured): per-function cyclomatic "
            "complexity as ruff's C901 counts it, per-module Maintainability Index, Halstead and raw "
            "line metrics as radon computes them. Exit code 1 when a gate fails, 2 on usage errors."
        ),
    )
    p.add_argument("path", type=Path, metavar="PATH", help="directory or Python file to audit")
    p.add_argument("--format", choices=["table", "json", "html"], default="table", help="output format")
    p.add_argument("--output", "-o", type=Path, metavar="FILE", help="write the report to FILE")
    p.add_argument("--max-complexity", type=int, metavar="N", help="fail if any function's complexity exceeds N")
    p.add_argument("--min-mi", type=float, metavar="X", help="fail if any file's maintainability index is below X")
    p.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB", help="leave out matching paths (repeatable)"
    )
    p.add_argument(
        "--no-multi-as-comments",
        action="store_true",
        help="do not count multi-line strings as comments in the MI (radon mi's -m off)",
    )
    p.add_argument("--top", type=int, default=30, metavar="N", help="table rows to show (0: all; default 30)")
    return p


def _progress_bar() -> tuple[Any, Any]:
    """A rich progress bar started lazily on the first report from a large tree (TTY only)."""
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if total < PROGRESS_MIN_FILES:
            return
        if "bar" not in state:
            from rich.console import Console
            from rich.progress import Progress

            bar = Progress(console=Console(stderr=True), transient=True)
            bar.start()
            state["bar"] = bar
            state["task"] = bar.add_task("auditing", total=total)
        state["bar"].update(state["task"], completed=done)

    def stop() -> None:
        if "bar" in state:
            state["bar"].stop()

    return update, stop


def _audit(args: argparse.Namespace) -> AuditReport:
    from pyagent.health.auditor import CodeHealthAuditor
    from pyagent.state.errors import TransactionError
    from pyagent.state.recovery import ensure_recovered

    if os.path.exists(args.path):
        try:  # never measure a tree that a killed transaction left half-changed
            ensure_recovered(args.path)
        except TransactionError as exc:
            raise CommandError(f"{args.path}: cannot roll back an interrupted transaction: {exc}") from exc
    auditor = CodeHealthAuditor(multi_as_comments=not args.no_multi_as_comments, excludes=args.exclude)
    update, stop = _progress_bar() if sys.stderr.isatty() else (None, None)
    try:
        return auditor.audit_path(args.path, progress=update)
    except FileNotFoundError as exc:
        raise CommandError(f"{args.path}: no such file or directory") from exc
    except PermissionError as exc:
        raise CommandError(f"{args.path}: permission denied (check the file's read permission)") from exc
    except OSError as exc:  # not a directory, too many symlinks …: the kind the Rust core reported
        raise CommandError(f"{args.path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        if stop is not None:
            stop()


def run(args: argparse.Namespace) -> int:
    from pyagent.health.auditor import gate

    if args.max_complexity is not None and args.max_complexity < 0:
        raise CommandError("--max-complexity must be >= 0")
    report = _audit(args)
    if args.format == "json":
        text = report.to_json(indent=True) + "\n"
    elif args.format == "html":
        from pyagent.health.report_html import render_html

        text = render_html(report)
    else:
        text = ""
    if args.format == "table":
        from rich.console import Console

        from pyagent.health.table import render_table

        if args.output:
            try:
                with open(args.output, "w", encoding="utf-8") as fh:
                    render_table(report, Console(file=fh, width=160, no_color=True), top=args.top or None)
            except OSError as exc:
                raise CommandError(f"cannot write {args.output}: {exc.strerror}") from exc
        else:
            render_table(report, Console(), top=args.top or None)
    elif args.output:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror}") from exc
    else:
        sys.stdout.write(text)
    if args.output:
        print(f"wrote {args.format} report to {args.output}", file=sys.stderr)

    offenders = gate(report, max_complexity=args.max_complexity, min_mi=args.min_mi)
    if offenders:
        from rich.console import Console

        from pyagent.health.table import render_offenders

        render_offenders(offenders, Console(stderr=True))
        return 1
    return 0
