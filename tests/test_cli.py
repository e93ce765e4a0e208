"""The console command itself: help, version, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pyagent
from pyagent.cli import COMMANDS, build_parser


def test_version_matches_pyproject() -> None:
    import tomllib

    from tests.conftest import REPO

    with open(REPO / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["version"] == pyagent.__version__


def test_version_flag(pyagent_cmd: list[str]) -> None:
    out = subprocess.run([*pyagent_cmd, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"pyagent {pyagent.__version__}"


def test_every_command_has_help(pyagent_cmd: list[str]) -> None:
    for name in COMMANDS:
        out = subprocess.run([*pyagent_cmd, name, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert f"usage: pyagent {name}" in out.stdout


def test_no_command_prints_help_and_fails() -> None:
    from pyagent.cli import main

    assert main([]) == 2


def test_parser_lists_all_commands() -> None:
    parser = build_parser()
    text = parser.format_help()
    for name in COMMANDS:
        assert name in text


def test_import_is_lazy() -> None:
    code = (
        "import sys, pyagent, pyagent.cli; pyagent.cli.build_parser();"
        "heavy = [m for m in ('numpy', 'zmq', 'fastapi', 'rich', 'pyagent._rust', 'openai') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported at start-up: {out.stdout}"


def test_public_names_resolve() -> None:
    for name in pyagent.__all__:
        assert getattr(pyagent, name) is not None
