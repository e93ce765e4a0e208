"""The verification gate: the one place that decides whether a change is kept.

Every change is judged in its isolated copy of the project: it parses; it brings no lint finding
that was not there before (under the project's own rules, findings compared as a set keyed by rule,
message and the flagged code, so removing one finding while adding another is caught); refactors and
LLM edits also may not raise a touched function's complexity or lower the file's Maintainability
Index (a lint or modernisation fix is judged by its findings and the tests only: an ordinary
``import os, sys`` split moves MI for no reason anyone cares about); and no test that passed in the
baseline fails. The cheap checks run first, the project's tests last.
"""

from __future__ import annotations

import ast
import difflib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.agents import ruff
from pyagent.agents.docstrings import strip_docstrings
from pyagent.agents.mixins.auditor import AuditorMixin
from pyagent.model.verification import Check, Verdict, Verification

if TYPE_CHECKING:
    from pyagent.agents.impact import TestImpact
    from pyagent.agents.test_results import TestResults
    from pyagent.agents.testing import TestAgent
    from pyagent.health import CodeHealthAuditor
    from pyagent.model.task import AgentTask
    from pyagent.shell import SecureShell

__all__ = ["LINT_KINDS", "FileMetrics", "FindingAt", "Snapshot", "VerificationGate", "gate_rules"]

MI_TOLERANCE = 1e-6
# Task kinds judged by findings and tests only; every other kind (refactors, LLM edits) also by health.
LINT_KINDS = frozenset({"ruff-fix", "format"})


def gate_rules(lint_origin: str, tests: str | None) -> list[str]:
    """The gate's rules in words, for the report, PR.md and the README."""
    return [
        "a change must parse",
        f"a change may bring no lint finding that was not there before; the rules are {lint_origin}; "
        "findings are compared as sets keyed by rule, message and the flagged code, not counted",
        "refactors and LLM edits may not raise a touched function's complexity or lower the file's "
        "maintainability index; lint, modernisation and formatting fixes are judged by findings and tests",
        (f"every test that passed in the baseline must still pass ({tests})" if tests else "no tests: "
         "changes are judged by the static checks only (--allow-few-tests)"),
    ]


@dataclass(frozen=True)
class FindingAt:
    """A lint finding as the gate keeps it: its identity and the lines it flags."""

    key: tuple[str, str, str, str]  # path, rule, message, flagged code
    line: int
    end_line: int


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
    findings: tuple[FindingAt, ...] = ()  # every lint finding, with the lines it flags
    text: str = ""  # the source, to tell which lines a change edited

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


def _edited_lines(old: str, new: str) -> set[int]:
    """Lines of ``new`` (1-based) that a change inserted or rewrote, and the neighbours of deletions."""
    matcher = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    out: set[int] = set()
    for op, _i1, _i2, j1, j2 in matcher.get_opcodes():
        if op in ("replace", "insert"):
            out.update(range(j1 + 1, j2 + 1))
        elif op == "delete":
            out.update((j1, j1 + 1))
    return out


def new_findings(before: FileMetrics, after: FileMetrics) -> list[FindingAt]:
    """Findings of ``after`` that were not there before.

    Compared as multisets keyed by rule, message and the flagged code: a finding that only moved is
    not new, and neither is one whose flagged code the change edited while as many findings of that
    rule and message were there before (an import block re-flagged after one of its imports was
    removed). Anything else is new, also when it replaces a fixed finding one for one.
    """
    extra = Counter(f.key for f in after.findings) - Counter(f.key for f in before.findings)
    if not extra:
        return []
    per_rule_before = Counter(f.key[1:3] for f in before.findings)
    per_rule_after = Counter(f.key[1:3] for f in after.findings)
    edited = _edited_lines(before.text, after.text)
    out = []
    for f in after.findings:
        if extra[f.key] <= 0:
            continue
        extra[f.key] -= 1
        same_rule_kept = per_rule_after[f.key[1:3]] <= per_rule_before[f.key[1:3]]
        if same_rule_kept and any(n in edited for n in range(f.line, max(f.line, f.end_line) + 1)):
            continue
        out.append(f)
    return out


def _is_python(path: str) -> bool:
    return path.endswith((".py", ".pyi"))


class VerificationGate(AuditorMixin):
    """Measures before a change, judges after it. One gate serves a whole run (it is stateless)."""

    def __init__(
        self,
        *,
        tests: TestAgent | None = None,
        baseline: TestResults | None = None,
        shell: SecureShell | None = None,
        auditor: CodeHealthAuditor | None = None,
        rules: ruff.LintRules | None = None,
        impact: TestImpact | None = None,
    ) -> None:
        if tests is not None and baseline is None:
            raise ValueError("a test agent needs the baseline it is compared against")
        self.tests = tests
        self.baseline = baseline
        self.shell = shell
        self._auditor = auditor
        self.rules = rules or ruff.LintRules()
        self.impact = impact  # test-impact selection: run only the tests exercising a change

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
            keys: dict[str, list[FindingAt]] = {}
            for finding in await ruff.check(ws, to_lint, rules=self.rules, shell=self.shell):
                keys.setdefault(finding.path, []).append(
                    FindingAt(finding.key(), finding.line, finding.end_line or finding.line)
                )
            for rel in to_lint:
                m = snap[rel]
                found = tuple(keys.get(rel, []))
                text = (ws / rel).read_bytes().decode("utf-8", errors="replace")
                snap[rel] = FileMetrics(
                    m.exists, m.parses, m.error, m.mi, m.functions, len(found), m.shape, found, text
                )
        return snap

    def compare(
        self,
        before: Mapping[str, FileMetrics],
        after: Mapping[str, FileMetrics],
        *,
        judge_health: bool = True,
    ) -> Verification:
        """The static checks of ``after`` against ``before``: parse, new findings, and (``judge_health``,
        for refactors and LLM edits) complexity and MI."""
        metrics: dict[str, Any] = {}
        failures: list[tuple[Check, str]] = []
        for rel, a in sorted(after.items()):
            b = before.get(rel, FileMetrics(exists=False))
            entry: dict[str, Any] = {"mi": [b.mi, a.mi], "ruff": [b.ruff, a.ruff]}
            if not a.exists:
                metrics[rel] = {"deleted": True}
                continue
            if not a.parses:
                failures.append((Check.PARSE, f"{rel} does not parse ({a.error})"))
                metrics[rel] = entry
                continue
            new = new_findings(b, a)
            if new:
                (_p, code, message, content), *rest = [f.key for f in new]
                more = f" (+{len(rest)} more)" if rest else ""
                failures.append(
                    (Check.RUFF, f"new finding in {rel}:{new[0].line}: {code} {message} at `{content[:60]}`{more}")
                )
                entry["new_findings"] = [list(f.key[1:]) for f in new]
            worst_before = max(b.functions.values(), default=1)
            changed_fns = {}
            for qn, c in a.functions.items():
                old = b.functions.get(qn)
                if old != c:
                    changed_fns[qn] = [old, c]
                if not judge_health:
                    continue
                if old is not None and c > old:
                    failures.append((Check.COMPLEXITY, f"complexity of {rel}:{qn} rose {old} -> {c}"))
                elif old is None and c > worst_before:
                    failures.append(
                        (Check.COMPLEXITY, f"new function {rel}:{qn} has complexity {c} > {worst_before}")
                    )
            entry["complexity"] = changed_fns
            docstrings_only = a.shape is not None and a.shape == b.shape
            if docstrings_only:
                entry["docstrings_only"] = True  # MI counts a one-line docstring as code; not a regression
            elif judge_health and b.mi is not None and a.mi is not None and a.mi < b.mi - MI_TOLERANCE:
                failures.append((Check.MI, f"maintainability index of {rel} fell {b.mi:.2f} -> {a.mi:.2f}"))
            metrics[rel] = entry
        if failures:
            check, reason = failures[0]
            if len(failures) > 1:
                reason += f" (and {len(failures) - 1} more)"
            return Verification(Verdict.REJECTED, reason, check, metrics)
        return Verification(Verdict.VERIFIED, "static checks passed", Check.NONE, metrics)

    async def verify(
        self,
        task: AgentTask,
        workspace: str | Path,
        before: Mapping[str, FileMetrics],
        changed: Iterable[str],
        *,
        judge_health: bool = True,
    ) -> Verification:
        """Judge ``task``'s change now present in ``workspace``; ``before`` came from :meth:`measure`.

        The tests run as the test agent's task in ``task``'s chain (its lineage and budget)."""
        after = await self.measure(workspace, changed)
        verdict = self.compare(before, after, judge_health=judge_health)
        if not verdict.passed or self.tests is None or self.baseline is None:
            return verdict
        changed = list(after)
        selection = self.impact.select(changed) if self.impact is not None else None
        if selection is not None and not selection:
            return Verification(
                Verdict.VERIFIED,
                "parses, no new findings, health not worse; no test exercises the changed files",
                Check.NONE,
                verdict.metrics,
                {"selected": 0},
            )
        outcome = await self.tests.run(
            self.tests.task(task.context, task_id=f"{task.id}/tests", select=selection, priority=task.priority),
            Path(workspace),
        )
        results = outcome.tests
        if results is None:
            return Verification(
                Verdict.REJECTED, f"the tests did not run ({outcome.error})", Check.TESTS, verdict.metrics
            )
        if selection is None:
            regressions = results.regressions(self.baseline)
        else:
            regressions = results.selected_regressions(self.baseline)
        tests = {
            **results.summary(),
            "regressions": regressions,
            "duration": round(results.duration, 3),
            "selected": "all" if selection is None else selection,
            "sandbox": list(results.sandbox),  # what confined this run and what it refused (every gate run)
        }
        if results.timed_out:
            return Verification(
                Verdict.REJECTED, f"tests timed out ({results.note})", Check.TESTS, verdict.metrics, tests
            )
        if regressions:
            shown = ", ".join(regressions[:3]) + (" ..." if len(regressions) > 3 else "")
            return Verification(
                Verdict.REJECTED,
                f"test failure: {len(regressions)} test(s) that passed before now fail: {shown}",
                Check.TESTS,
                verdict.metrics,
                tests,
            )
        health = ", health not worse" if judge_health else ""
        return Verification(
            Verdict.VERIFIED, f"parses, no new findings{health}, tests pass", Check.NONE, verdict.metrics, tests
        )
