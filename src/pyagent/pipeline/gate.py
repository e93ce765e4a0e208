"""The verification gate: the one place that decides whether a change is kept.

Every change, from any agent, is judged the same way in its isolated copy of the project:
it parses; ruff findings on the touched files do not increase; complexity of the touched functions
and the Maintainability Index of the touched files do not get worse (CodeHealthAuditor); and no test
that passed in the baseline fails. The cheap checks run first, the project's tests last.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.agents import ruff
from pyagent.agents.docstrings import strip_docstrings
from pyagent.agents.mixins.auditor import AuditorMixin

if TYPE_CHECKING:
    from pyagent.agents.testing import TestResults, TestRunner
    from pyagent.health import CodeHealthAuditor
    from pyagent.shell import SecureShell

__all__ = ["FileMetrics", "GateVerdict", "Snapshot", "VerificationGate"]

MI_TOLERANCE = 1e-6


@dataclass(frozen=True)
class FileMetrics:
    """What the gate measures of one file."""

    exists: bool
    parses: bool = True
    error: str | None = None
    mi: float | None = None
    functions: dict[str, int] = field(default_factory=dict)  # qualname -> complexity
    ruff: int = 0
    shape: str | None = None  # AST without docstrings: equal before/after = a docstring-only change

    def to_dict(self) -> dict[str, Any]:
        return {
            "exists": self.exists,
            "parses": self.parses,
            "error": self.error,
            "mi": self.mi,
            "functions": self.functions,
            "ruff": self.ruff,
        }


Snapshot = dict[str, FileMetrics]


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reason: str
    check: str  # the check that failed: parse | ruff | complexity | mi | tests | "" when passed
    metrics: dict[str, Any] = field(default_factory=dict)
    tests: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "check": self.check,
            "metrics": self.metrics,
            "tests": self.tests,
        }


def _is_python(path: str) -> bool:
    return path.endswith((".py", ".pyi"))


class VerificationGate(AuditorMixin):
    """Measures before a change, judges after it. One gate serves a whole run (it is stateless)."""

    def __init__(
        self,
        *,
        tests: TestRunner | None = None,
        baseline: TestResults | None = None,
        shell: SecureShell | None = None,
        auditor: CodeHealthAuditor | None = None,
    ) -> None:
        if tests is not None and baseline is None:
            raise ValueError("a test runner needs the baseline it is compared against")
        self.tests = tests
        self.baseline = baseline
        self.shell = shell
        self._auditor = auditor

    async def measure(self, workspace: str | Path, paths: Iterable[str]) -> Snapshot:
        """Parse, audit and lint ``paths`` as they are now in ``workspace``."""
        ws = Path(workspace)
        snap: Snapshot = {}
        to_lint: list[str] = []
        for rel in sorted(set(paths)):
            file = ws / rel
            if not file.is_file():
                snap[rel] = FileMetrics(exists=False)
                continue
            if not _is_python(rel):
                snap[rel] = FileMetrics(exists=True)
                continue
            text = file.read_bytes().decode("utf-8", errors="replace")
            try:
                ast.parse(text, filename=rel)
            except SyntaxError as exc:
                snap[rel] = FileMetrics(exists=True, parses=False, error=f"line {exc.lineno}: {exc.msg}")
                continue
            health = self.auditor.audit_source(text, rel)
            snap[rel] = FileMetrics(
                exists=True,
                mi=health.mi,
                functions={f.qualname: f.complexity for f in health.functions},
                error=health.error,
                shape=strip_docstrings(text),
            )
            to_lint.append(rel)
        if to_lint:
            counts: dict[str, int] = {}
            for finding in await ruff.check(ws, to_lint, shell=self.shell):
                counts[finding.path] = counts.get(finding.path, 0) + 1
            for rel in to_lint:
                m = snap[rel]
                snap[rel] = FileMetrics(
                    m.exists, m.parses, m.error, m.mi, m.functions, counts.get(rel, 0), m.shape
                )
        return snap

    def compare(self, before: Mapping[str, FileMetrics], after: Mapping[str, FileMetrics]) -> GateVerdict:
        """The static checks (parse, ruff, complexity, MI) of ``after`` against ``before``."""
        metrics: dict[str, Any] = {}
        failures: list[tuple[str, str]] = []
        for rel, a in sorted(after.items()):
            b = before.get(rel, FileMetrics(exists=False))
            entry: dict[str, Any] = {"mi": [b.mi, a.mi], "ruff": [b.ruff, a.ruff]}
            if not a.exists:
                metrics[rel] = {"deleted": True}
                continue
            if not a.parses:
                failures.append(("parse", f"{rel} does not parse ({a.error})"))
                metrics[rel] = entry
                continue
            if a.ruff > b.ruff:
                failures.append(("ruff", f"ruff findings in {rel} rose {b.ruff} -> {a.ruff}"))
            worst_before = max(b.functions.values(), default=1)
            changed_fns = {}
            for qn, c in a.functions.items():
                old = b.functions.get(qn)
                if old != c:
                    changed_fns[qn] = [old, c]
                if old is not None and c > old:
                    failures.append(("complexity", f"complexity of {rel}:{qn} rose {old} -> {c}"))
                elif old is None and c > worst_before:
                    failures.append(
                        ("complexity", f"new function {rel}:{qn} has complexity {c} > {worst_before}")
                    )
            entry["complexity"] = changed_fns
            docstrings_only = a.shape is not None and a.shape == b.shape
            if docstrings_only:
                entry["docstrings_only"] = True  # MI counts a one-line docstring as code; not a regression
            elif b.mi is not None and a.mi is not None and a.mi < b.mi - MI_TOLERANCE:
                failures.append(("mi", f"maintainability index of {rel} fell {b.mi:.2f} -> {a.mi:.2f}"))
            metrics[rel] = entry
        if failures:
            check, reason = failures[0]
            if len(failures) > 1:
                reason += f" (and {len(failures) - 1} more)"
            return GateVerdict(False, reason, check, metrics)
        return GateVerdict(True, "static checks passed", "", metrics)

    async def verify(
        self, workspace: str | Path, before: Mapping[str, FileMetrics], changed: Iterable[str]
    ) -> GateVerdict:
        """Judge the change now present in ``workspace``; ``before`` came from :meth:`measure`."""
        after = await self.measure(workspace, changed)
        verdict = self.compare(before, after)
        if not verdict.passed or self.tests is None or self.baseline is None:
            return verdict
        results = await self.tests.run(workspace)
        regressions = results.regressions(self.baseline)
        tests = {**results.summary(), "regressions": regressions, "duration": round(results.duration, 3)}
        if results.timed_out:
            return GateVerdict(False, f"tests timed out ({results.note})", "tests", verdict.metrics, tests)
        if regressions:
            shown = ", ".join(regressions[:3]) + (" ..." if len(regressions) > 3 else "")
            return GateVerdict(
                False,
                f"test failure: {len(regressions)} test(s) that passed before now fail: {shown}",
                "tests",
                verdict.metrics,
                tests,
            )
        return GateVerdict(
            True, "parses, no new findings, health not worse, tests pass", "", verdict.metrics, tests
        )
