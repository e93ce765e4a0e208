"""Code-health audit: typed results over the Rust metrics core.

All metrics are computed by ``pyagent._rust`` (C901 as ruff counts it; MI, Halstead and raw
lines as radon counts them); this module only shapes the results into frozen, JSON-ready
dataclasses, summarises them and applies CI gates.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class FunctionHealth:
    """One function or method; ``lineno`` is the line of its ``def`` keyword (decorators excluded)."""

    name: str
    qualname: str
    lineno: int
    endline: int
    complexity: int


@dataclass(frozen=True, slots=True)
class Halstead:
    """Module Halstead metrics with radon's names and definitions."""

    h1: int
    h2: int
    N1: int
    N2: int
    vocabulary: int
    length: int
    calculated_length: float
    volume: float
    difficulty: float
    effort: float
    time: float
    bugs: float


@dataclass(frozen=True, slots=True)
class RawMetrics:
    """radon's raw line counts (``loc = sloc + blank + multi + single_comments``)."""

    loc: int
    lloc: int
    sloc: int
    comments: int
    multi: int
    blank: int
    single_comments: int


_HALSTEAD_FIELDS = tuple(f.name for f in fields(Halstead))
_RAW_FIELDS = tuple(f.name for f in fields(RawMetrics))


@dataclass(frozen=True, slots=True)
class FileHealth:
    """Health of one file. ``error`` says why metrics are missing (syntax error, skipped file)."""

    path: str
    mi: float | None
    mi_rank: str | None
    halstead: Halstead | None
    raw: RawMetrics | None
    functions: tuple[FunctionHealth, ...]
    error: str | None
    complexity: int | None = None
    skipped: bool = False
    seconds: float = field(default=0.0, compare=False)

    @property
    def max_complexity(self) -> int:
        return max((f.complexity for f in self.functions), default=0)

    def to_dict(self) -> dict[str, Any]:
        # Built by hand: dataclasses.asdict deep-copies and is ~20x slower on large audits.
        h = self.halstead
        r = self.raw
        return {
            "path": self.path,
            "mi": self.mi,
            "mi_rank": self.mi_rank,
            "complexity": self.complexity,
            "halstead": {k: getattr(h, k) for k in _HALSTEAD_FIELDS} if h else None,
            "raw": {k: getattr(r, k) for k in _RAW_FIELDS} if r else None,
            "functions": [
                {
                    "name": f.name,
                    "qualname": f.qualname,
                    "lineno": f.lineno,
                    "endline": f.endline,
                    "complexity": f.complexity,
                }
                for f in self.functions
            ],
            "error": self.error,
            "skipped": self.skipped,
        }


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


_RawFile = tuple[
    str,
    str | None,
    bool,
    float | None,
    str | None,
    int | None,
    tuple[int, int, int, int, int, int, float, float, float, float, float, float] | None,
    tuple[int, int, int, int, int, int, int] | None,
    list[tuple[str, str, int, int, int]],
    float,
]


def _file_from_rust(t: _RawFile) -> FileHealth:
    path, error, skipped, mi, rank, complexity, hal, raw, functions, seconds = t
    return FileHealth(
        path=path,
        mi=mi,
        mi_rank=rank,
        halstead=Halstead(*hal) if hal else None,
        raw=RawMetrics(*raw) if raw else None,
        functions=tuple(FunctionHealth(*f) for f in functions),
        error=error,
        complexity=complexity,
        skipped=skipped,
        seconds=seconds,
    )


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def summarize(files: Sequence[FileHealth], walk_errors: Sequence[tuple[str, str]], wall: float) -> dict[str, Any]:
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
        "walk_errors": [{"path": p, "error": e} for p, e in walk_errors],
        "timing": {
            "wall_seconds": round(wall, 4),
            "per_file": "CPU time of the analysing thread (read, parse, all metrics)",
            "p50_file_ms": round(_percentile(times, 0.50), 3),
            "p99_file_ms": round(_percentile(times, 0.99), 3),
            "max_file_ms": round(times[-1], 3) if times else 0.0,
        },
    }


def _check_readable(root: Path) -> None:
    """Raise ``PermissionError`` if the root itself cannot be read (tried, not guessed from mode bits)."""
    if root.is_dir():
        with os.scandir(root) as entries:
            next(entries, None)
    else:
        with open(root, "rb") as fh:
            fh.read(1)


class CodeHealthAuditor:
    """Audits a tree or a source string; results are typed and JSON-serialisable."""

    def __init__(self, *, multi_as_comments: bool = True, excludes: Sequence[str] = ()) -> None:
        self.multi_as_comments = multi_as_comments
        self.excludes = tuple(excludes)

    def audit_path(
        self, path: str | os.PathLike[str], *, progress: ProgressCallback | None = None
    ) -> AuditReport:
        """Audit every ``*.py`` under ``path`` (``.gitignore`` honoured) or the one file ``path``.

        Raises ``FileNotFoundError`` for a missing path and ``PermissionError`` for an unreadable
        root; problems with individual files are reported per file instead.
        """
        from pyagent import _rust

        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"no such file or directory: {root}")
        _check_readable(root)
        start = time.perf_counter()
        # Hundreds of thousands of small objects, none cyclic: the cyclic GC would only rescan them.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            raw_files, walk_errors = _rust.audit_tree(
                str(root), excludes=list(self.excludes), multi_as_comments=self.multi_as_comments, progress=progress
            )
            files = tuple(_file_from_rust(t) for t in raw_files)
        finally:
            if gc_was_enabled:
                gc.enable()
        wall = time.perf_counter() - start
        return AuditReport(root=str(root), files=files, summary=summarize(files, walk_errors, wall))

    def audit_source(self, source: str, path: str = "<string>") -> FileHealth:
        """Audit one module given as text."""
        from pyagent import _rust

        return _file_from_rust(_rust.audit_source(source, path, multi_as_comments=self.multi_as_comments))


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
