"""Agreement with ruff and radon on real code: a sizeable slice of this interpreter's standard library.

ruff (``check --select C901``) and radon (``mi``, ``raw``, ``hal``) run live in this test on a copy
of the modules below, large ones included; ``benchmarks/agreement.py`` runs the same comparison on
the whole standard library.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest

from benchmarks.agreement import collect_reference, compare
from pyagent.health import CodeHealthAuditor

MODULES = [
    "typing.py", "inspect.py", "argparse.py", "subprocess.py", "re/_parser.py", "unittest/mock.py",
    "tkinter/__init__.py", "_pydecimal.py", "email/_header_value_parser.py", "pydoc.py", "turtle.py",
    "difflib.py", "ast.py", "dataclasses.py", "asyncio/base_events.py", "collections/__init__.py", "enum.py",
    "functools.py", "pathlib.py", "shutil.py", "tarfile.py", "zipfile.py", "logging/__init__.py",
    "http/client.py", "json/decoder.py", "textwrap.py", "statistics.py", "fractions.py", "string.py",
    "idlelib/pyshell.py", "lib2to3/pgen2/tokenize.py", "ctypes/__init__.py", "xml/dom/minidom.py",
    "urllib/parse.py", "configparser.py", "optparse.py", "imaplib.py", "doctest.py", "pickle.py", "pprint.py",
    "tokenize.py", "traceback.py", "locale.py", "calendar.py", "datetime.py", "csv.py", "heapq.py",
    "__future__.py", "this.py", "antigravity.py",
]  # fmt: skip


@pytest.mark.timeout(180)
def test_agrees_with_ruff_and_radon_on_stdlib_modules(tmp_path: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    present = [m for m in MODULES if (stdlib / m).is_file()]
    assert len(present) >= 40, f"expected most of the sample in {stdlib}"
    for rel in present:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stdlib / rel, tmp_path / rel)

    reference = collect_reference(tmp_path, present)
    report = CodeHealthAuditor().audit_path(tmp_path)
    checks = {c.name: c for c in compare(report, reference)}

    c901 = checks["C901 functions (ruff)"]
    assert c901.total > 3000, "ruff must have reported the functions of these modules"
    for check in checks.values():
        assert check.total >= (len(present) if check is not c901 else 1)
        assert check.exceptions == [], check.name
        assert check.agreed == check.total
