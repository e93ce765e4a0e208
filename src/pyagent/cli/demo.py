"""``pyagent demo``: improve a bundled messy sample project offline, and show what happened."""

from __future__ import annotations

import argparse
from typing import Any

from pyagent.cli import CommandError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run `improve` on a bundled messy sample project (offline, about a minute)",
        description=(
            "Copies a deliberately messy sample project (with its own tests and a trap: an import kept only "
            "for its side effect) to a temporary folder and improves it offline with the deterministic agents. "
            "Prints what was kept and rolled back, the before/after metrics and the report's path."
        ),
    )
    p.add_argument(
        "--keep", metavar="DIR", help="copy the sample to DIR (new or empty) and keep it afterwards"
    )
    p.add_argument(
        "--concurrency", type=int, default=0, metavar="N", help="agents at once (default: CPUs, max 4)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from pyagent.improve.demo import DemoError, prepare_demo
    from pyagent.improve.display import LiveDisplay, print_summary
    from pyagent.improve.run import ImproveError, ImproveOptions, improve

    try:
        project = prepare_demo(args.keep)
    except DemoError as exc:
        raise CommandError(str(exc)) from exc
    concurrency = args.concurrency if args.concurrency > 0 else max(1, min(4, os.cpu_count() or 1))
    display = LiveDisplay()
    display.console.print(f"demo project: {project}")
    # The sample needs no pytest plugins; not loading the installed ones saves about a second per test run.
    opts = ImproveOptions(
        path=project,
        concurrency=concurrency,
        use_git=False,
        in_place=True,  # the demo works on its own copy of the sample
        on_progress=display,
        test_env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    try:
        with display:
            result = asyncio.run(improve(opts))
    except ImproveError as exc:
        raise CommandError(str(exc)) from exc
    print_summary(result, display.console)
    return 1 if result.regressions() else 0
