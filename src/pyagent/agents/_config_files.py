"""Reading a project's own configuration files without failing on a broken one.

A project whose pyproject.toml or setup.cfg does not parse is configured as if the file said nothing:
the agents that ask (which test runner, which type checker, which Python) fall back to their defaults.
"""

from __future__ import annotations

import configparser
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def pyproject(root: Path) -> dict[str, Any]:
    """The project's pyproject.toml as a table, empty when it is absent or does not parse."""
    try:
        return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def has_ini_section(root: Path, files: Iterable[tuple[str, str]]) -> bool:
    """Whether any of the (file name, section) pairs names a section present in that ini file of the project."""
    for name, section in files:
        path = root / name
        if not path.is_file():
            continue
        parser = configparser.ConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue
        if parser.has_section(section):
            return True
    return False
