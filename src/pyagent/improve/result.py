"""What one improve run produced: a record per task and the run's result (read by report and display)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.model.status import Status
from pyagent.model.verification import Verification

if TYPE_CHECKING:
    from pyagent.agents.test_results import TestResults

__all__ = ["STATUSES", "RunResult", "TaskRecord"]

STATUSES: tuple[Status, ...] = tuple(Status)



LLM_AGENTS = frozenset({"docstring", "refactor"})  # the agents that ask a model for their edit


@dataclass
class TaskRecord:
    id: str
    agent: str
    action: str
    target: str
    priority: str
    status: Status = Status.SKIPPED
    reason: str = ""
    note: str = ""
    diff: str = ""
    verification: Verification | None = None  # the last attempt's, None before any
    tokens: int = 0
    cost: float = 0.0
    duration: float = 0.0
    commit: str | None = None
    lineage: tuple[str, ...] = ()
    base_hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "action": self.action,
            "target": self.target,
            "priority": self.priority,
            "status": Status.from_wire(self.status).value,
            "reason": self.reason,
            "note": self.note,
            "diff": self.diff,
            "verification": self.verification.to_wire() if self.verification is not None else {},
            "tokens": self.tokens,
            "cost": round(self.cost, 6),
            "duration": round(self.duration, 3),
            "commit": self.commit,
            "lineage": list(self.lineage),
        }

    def restore(self, d: dict[str, Any]) -> None:
        """Take back a finished task's outcome from a checkpoint (``improve --resume``)."""
        self.status = Status.from_wire(d.get("status"))
        self.reason, self.note, self.diff = str(d.get("reason", "")), str(d.get("note", "")), str(d.get("diff", ""))
        wire = d.get("verification")
        self.verification = Verification.from_wire(wire) if wire else None
        commit = d.get("commit")
        self.commit = commit if isinstance(commit, str) else None


@dataclass
class RunResult:
    run_id: str
    root: Path
    mode: str  # git | in-place | dry-run
    tasks: list[TaskRecord]
    skipped_by_memory: list[dict[str, str]]
    tests_before: TestResults | None
    tests_after: TestResults | None
    metrics_before: dict[str, Any]
    metrics_after: dict[str, Any]
    usage: dict[str, Any]
    duration: float
    branch: str | None = None
    base_commit: str | None = None
    report_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    not_attempted: int = 0  # planned changes left out (over --max-tasks, unreadable files)
    gate: list[str] = field(default_factory=list)  # the gate's rules, in words
    settings: dict[str, str] = field(default_factory=dict)  # lint rules, formatter, test command: and why
    interrupted: str | None = None  # the signal that ended the run early
    agents: list[dict[str, Any]] = field(default_factory=list)  # the identity of every agent of the run
    phase_seconds: dict[str, float] = field(default_factory=dict)  # baseline, tasks, final
    warnings: list[dict[str, Any]] = field(default_factory=list)  # the baseline's deprecation warnings

    def categories(self) -> dict[str, dict[str, Any]]:
        """Before/after per kind of improvement: complexity, dead code, deprecations, lint."""
        b, a = self.metrics_before, self.metrics_after

        def kept(agent: str) -> list[TaskRecord]:
            return [t for t in self.tasks if t.agent == agent and t.status is Status.KEPT]

        dead_lines = 0
        for t in kept("deadcode"):
            lines = t.diff.splitlines()
            removed = sum(1 for ln in lines if ln.startswith("-") and not ln.startswith("---"))
            added = sum(1 for ln in lines if ln.startswith("+") and not ln.startswith("+++"))
            dead_lines += removed - added
        before_w = {(w[0], w[2], w[3]) for w in (self.tests_before.warnings if self.tests_before else ())}
        after_w = {(w[0], w[2], w[3]) for w in (self.tests_after.warnings if self.tests_after else ())}
        return {
            "complexity": {
                "functions_over_threshold": [b.get("functions_over_threshold"), a.get("functions_over_threshold")],
                "complexity_max": [b.get("complexity_max"), a.get("complexity_max")],
                "complexity_avg": [b.get("complexity_avg"), a.get("complexity_avg")],
                "refactors_kept": len(kept("complexity")) + len(kept("refactor")),
            },
            "dead_code": {"removals_kept": len(kept("deadcode")), "lines_removed": dead_lines},
            "deprecations": {
                "warnings": [len(before_w), len(after_w) if self.tests_after else None],
                "fixed": len(before_w - after_w) if self.tests_after else 0,
                "fixes_kept": len(kept("deprecation")),
                "without_a_ruff_fix": [w for w in self.warnings if w.get("rule") is None],
            },
            "types": {
                "annotated_functions": [b.get("annotated_functions"), a.get("annotated_functions")],
                "annotation_changes_kept": len(kept("types")),
            },
            "lint": {"ruff_findings": [b.get("ruff_findings"), a.get("ruff_findings")]},
        }

    def llm_tasks(self) -> tuple[int, int]:
        """(LLM tasks whose edit reached the gate, i.e. kept or rolled back, all LLM tasks attempted)."""
        tasks = [t for t in self.tasks if t.agent in LLM_AGENTS and t.status != "skipped"]
        return sum(1 for t in tasks if t.status in ("kept", "rolled_back")), len(tasks)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(1 for t in self.tasks if t.status == s) for s in STATUSES}

    def regressions(self) -> list[str]:
        if self.tests_before is None or self.tests_after is None:
            return []
        return self.tests_after.regressions(self.tests_before)
