"""The numbers a run compares before and after: files, functions, MI, complexity, findings, annotations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyagent.health import AuditReport

__all__ = ["metrics_summary"]


def metrics_summary(
    audit: AuditReport, findings: int | None, max_complexity: int, root: Path | None = None
) -> dict[str, Any]:
    """The run's before/after numbers (what the report compares); with ``root``, also how many of the
    project's (non-test) functions are fully annotated."""
    ok = [f for f in audit.files if not f.error]
    annotated: dict[str, Any] = {}
    if root is not None:
        from pyagent.agents.impact import is_test_path
        from pyagent.agents.typehints import annotated_functions

        full = 0
        for f in ok:
            if not is_test_path(f.path):
                try:
                    full += annotated_functions((root / f.path).read_text(encoding="utf-8"))[0]
                except (OSError, UnicodeDecodeError):
                    continue
        annotated["annotated_functions"] = full
    mis = [f.mi for f in ok if f.mi is not None]
    fns = [fn.complexity for f in ok for fn in f.functions]
    return {
        "files": len(audit.files),
        "functions": len(fns),
        "mi_avg": round(sum(mis) / len(mis), 3) if mis else None,
        "mi_min": round(min(mis), 3) if mis else None,
        "complexity_avg": round(sum(fns) / len(fns), 3) if fns else None,
        "complexity_max": max(fns, default=0),
        "functions_over_threshold": sum(1 for c in fns if c > max_complexity),
        "ruff_findings": findings,
        **annotated,
    }
