"""The benchmarks' shared corpus: a copy of this interpreter's standard library."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path


def stdlib_copy(dest: Path, *, with_tests: bool = False) -> Path:
    """Copy ``Lib/``'s ``.py`` files to ``dest``, without ``site-packages/`` and caches.

    ``with_tests=False`` also leaves out ``Lib/test/``: that is the corpus the audit's agreement and
    speed figures are quoted on; the replace benchmarks use the whole library.
    """
    src = Path(sysconfig.get_paths()["stdlib"])

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {"__pycache__", "site-packages", "dist-packages"}
        if Path(directory) == src and not with_tests:
            skip |= {"test"}
        return {n for n in names if n in skip or (not n.endswith(".py") and (Path(directory) / n).is_file())}

    shutil.copytree(src, dest, ignore=ignore, symlinks=True)
    return dest


def count_py(root: Path) -> int:
    return sum(1 for p in root.rglob("*.py") if p.is_file())
