"""Code-health audit: typed results over the Rust metrics core.

All metrics are computed by ``pyagent._rust`` (C901 as ruff counts it; MI, Halstead and raw
lines as radon counts them), which also defines the frozen per-file result classes re-exported
here; this module summarises them into a JSON-ready report and applies CI gates.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pyagent import _rust
from pyagent._rust import FileHealth as FileHealth
from pyagent._rust import FunctionHealth as FunctionHealth
from pyagent._rust import Halstead as Halstead
from pyagent._rust import RawMetrics as RawMetrics

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class AuditReport:
    """All files of one audit, in path order, and a summary."""

    root: str
    files: tuple[FileHealth, ...]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "files": [f.to_dict() for f in self.files], "summary": self.summary}

    def to_json(self, *, indent: bool = False) -> str:
        option = orjson.OPT_INDENT_2 if indent else 0
        return orjson.dumps(self.to_dict(), option=option).decode()

    def worst_first(self) -> list[FileHealth]:
        """Files with the lowest MI first, ties broken by the most complex function."""
        return sorted(
            self.files,
            key=lambda f: (f.mi if f.mi is not None else math.inf, -f.max_complexity, f.path),
        )


@dataclass(frozen=True, slots=True)
class Offender:
    """A file or function that fails a gate."""

    path: str
    what: str
    value: float
    limit: float
    line: int | None = None


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def summarize(files: Sequence[FileHealth], walk_errors: Sequence[_rust.Unreadable], wall: float) -> dict[str, Any]:
    """Counts, averages, the worst file and function, and per-file timing (milliseconds)."""
    mis = [f.mi for f in files if f.mi is not None]
    functions = [(f, fn) for f in files for fn in f.functions]
    worst_fn = max(functions, key=lambda p: p[1].complexity, default=None)
    worst_file = min((f for f in files if f.mi is not None), key=lambda f: f.mi or 0.0, default=None)
    times = sorted(f.seconds * 1000.0 for f in files)  # CPU time of the worker thread per file
    return {
        "files": len(files),
        "analyzed": sum(1 for f in files if f.error is None),
        "errors": sum(1 for f in files if f.error is not None and not f.skipped),
        "skipped": sum(1 for f in files if f.skipped),
        "functions": len(functions),
        "mean_mi": round(sum(mis) / len(mis), 2) if mis else None,
        "worst_mi": {"path": worst_file.path, "mi": worst_file.mi} if worst_file else None,
        "max_complexity": (
            {"path": worst_fn[0].path, "qualname": worst_fn[1].qualname, "complexity": worst_fn[1].complexity}
            if worst_fn
            else None
        ),
        "sloc": sum(f.raw.sloc for f in files if f.raw),
        "walk_errors": [{"path": e.path, "error": e.reason} for e in walk_errors],
        "timing": {
            "wall_seconds": round(wall, 4),
            "per_file": "CPU time of the analysing thread (read, parse, all metrics)",
            "p50_file_ms": round(_percentile(times, 0.50), 3),
            "p99_file_ms": round(_percentile(times, 0.99), 3),
            "max_file_ms": round(times[-1], 3) if times else 0.0,
        },
    }


class CodeHealthAuditor:
    """Audits a tree or a source string; results are typed and JSON-serialisable."""

    def __init__(self, *, multi_as_comments: bool = True, excludes: Sequence[str] = ()) -> None:
        self.multi_as_comments = multi_as_comments
        self.excludes = tuple(excludes)

    def audit_path(
        self, path: str | os.PathLike[str], *, progress: ProgressCallback | None = None
    ) -> AuditReport:
        """Audit every ``*.py`` under ``path`` (``.gitignore`` honoured) or the one file ``path``.

        A root that cannot be opened raises the OSError of its kind (``FileNotFoundError``,
        ``PermissionError``, ``NotADirectoryError`` …); problems with individual files are reported
        per file instead.
        """
        root = Path(path)
        start = time.perf_counter()
        # Hundreds of thousands of small objects, none cyclic: the cyclic GC would only rescan them.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            audited = _rust.audit_tree(
                str(root), excludes=list(self.excludes), multi_as_comments=self.multi_as_comments, progress=progress
            )
            files = tuple(audited.files)
        finally:
            if gc_was_enabled:
                gc.enable()
        wall = time.perf_counter() - start
        return AuditReport(root=str(root), files=files, summary=summarize(files, audited.errors, wall))

    def audit_source(self, source: str, path: str = "<string>") -> FileHealth:
        """Audit one module given as text."""
        return _rust.audit_source(source, path, multi_as_comments=self.multi_as_comments)


def gate(report: AuditReport, *, max_complexity: int | None = None, min_mi: float | None = None) -> list[Offender]:
    """Functions above ``max_complexity`` and files below ``min_mi``, worst first."""
    offenders: list[Offender] = []
    for f in report.files:
        if max_complexity is not None:
            offenders.extend(
                Offender(f.path, fn.qualname, fn.complexity, max_complexity, fn.lineno)
                for fn in f.functions
                if fn.complexity > max_complexity
            )
        if min_mi is not None and f.mi is not None and f.mi < min_mi:
            offenders.append(Offender(f.path, "maintainability index", f.mi, min_mi))
    return sorted(offenders, key=lambda o: (o.what == "maintainability index", -abs(o.value - o.limit)))
