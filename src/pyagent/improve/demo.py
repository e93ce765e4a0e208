"""``pyagent demo``: the bundled messy sample, copied somewhere safe and improved offline."""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

__all__ = ["DemoError", "prepare_demo"]


class DemoError(Exception):
    pass


def sample_dir() -> Path:
    return Path(str(resources.files("pyagent") / "samples" / "messy_project"))


def prepare_demo(keep: str | os.PathLike[str] | None) -> Path:
    """Copy the sample to ``keep`` (which must not exist or be empty) or to a new temp dir."""
    src = sample_dir()
    if not (src / "inventory").is_dir():
        raise DemoError(f"the bundled sample project is missing from {src}; reinstall pyagent")
    if keep is None:
        dest = Path(tempfile.mkdtemp(prefix="pyagent-demo-")) / "messy_project"
    else:
        dest = Path(keep).resolve()
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise DemoError(f"{dest} already exists and is not empty; choose a new folder for --keep")
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", ".pyagent", "*.pyc")
    shutil.copytree(src, dest, ignore=ignore, dirs_exist_ok=True)
    return dest
