"""What one improve run produced: a record per task and the run's result (read by report and display)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyagent.agents.testing import TestResults

__all__ = ["STATUSES", "RunResult", "TaskRecord"]

STATUSES = ("kept", "rolled_back", "failed", "skipped")



@dataclass
class TaskRecord:
    id: str
    agent: str
    action: str
    target: str
    priority: str
    status: str = "skipped"
    reason: str = ""
    note: str = ""
    diff: str = ""
    verification: dict[str, Any] = field(default_factory=dict)
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
            "status": self.status,
            "reason": self.reason,
            "note": self.note,
            "diff": self.diff,
            "verification": self.verification,
            "tokens": self.tokens,
            "cost": round(self.cost, 6),
            "duration": round(self.duration, 3),
            "commit": self.commit,
            "lineage": list(self.lineage),
        }


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
    agents: list[dict[str, Any]] = field(default_factory=list)  # the identity of every agent of the run

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for t in self.tasks if t.status == s) for s in STATUSES}

    def regressions(self) -> list[str]:
        if self.tests_before is None or self.tests_after is None:
            return []
        return self.tests_after.regressions(self.tests_before)
