"""``pyagent doctor``: what this machine can enforce when PyAgent runs untrusted code.

Runs one real confined command (``true``) and prints the sandbox table it ran in; exit code 0 when every
required protection is active, 1 when one is missing (so CI can insist on a full sandbox).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="show which sandbox protections work on this machine",
        description="Starts one confined command and prints which protections were set up for it "
        "(namespaces, Landlock, caps, memory/tmp limits, freezer). Exit code 1 when one is missing.",
    )
    p.add_argument("--allow-network", action="store_true", help="check the policy that allows the network")
    return p


def run(args: argparse.Namespace) -> int:
    from pyagent.shell.confine import Confinement, format_table, missing
    from pyagent.shell.secure import SecureShell

    true = shutil.which("true") or "/bin/true"
    shell = SecureShell(timeout=30.0, confine=Confinement(enabled=Confinement.default().enabled,
                                                          allow_network=args.allow_network))
    with tempfile.TemporaryDirectory(prefix="pyagent-doctor-") as work:
        result = shell.run_sync([true], cwd=work)
    print(f"pyagent doctor: sandbox on this machine ({sys.platform}):")
    print(format_table(result.protections))
    absent = missing(result.protections)
    if absent:
        print("missing: " + ", ".join(r.name for r in absent) + " (pyagent exec --require-sandbox would refuse)")
        return 1
    print("all required protections are active")
    return 0
