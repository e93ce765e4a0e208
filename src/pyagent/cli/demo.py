"""``pyagent demo``: the newcomer's first run on a messy sample project bundled with the package.

Provisional: until ``improve`` lands this copies the sample to a temporary directory and audits
it; the sample itself is never modified.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run PyAgent on a bundled messy sample project (in a temporary copy)",
        description="Copy the bundled sample project to a temporary directory and audit it.",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary copy and print where it is")
    return p


def run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    from importlib.resources import as_file, files
    from pathlib import Path

    from rich.console import Console

    from pyagent.health.auditor import CodeHealthAuditor
    from pyagent.health.table import render_table

    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="pyagent-demo-"))
    try:
        with as_file(files("pyagent") / "samples" / "messy_project") as sample:
            project = Path(shutil.copytree(sample, workdir / "messy_project"))
        console.print(f"Sample project copied to {project}", highlight=False)
        report = CodeHealthAuditor().audit_path(project)
        render_table(report, console)
    finally:
        if args.keep:
            console.print(f"kept {workdir}", highlight=False)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0
