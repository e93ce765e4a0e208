"""Statuses are defined once; whatever reads one back (a record, a knowledge outcome) refuses an unknown one."""

from __future__ import annotations

import pytest

from pyagent.improve.result import STATUSES, TaskRecord
from pyagent.model.knowledge import ChangeOutcome
from pyagent.model.status import Status


@pytest.mark.parametrize("bad", ["kept ", "KEPT", "done", 1, None])
def test_unknown_statuses_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        Status.from_wire(bad)
    with pytest.raises(ValueError, match="status must be one of"):
        ChangeOutcome(agent="a", action="x", task_kind="k", target="t", target_hash="h", status=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status must be one of"):
        TaskRecord("t1", "lint", "lint:F401", "m.py", "high", status=bad).to_dict()  # type: ignore[arg-type]


def test_the_report_counts_every_status_it_can_write() -> None:
    assert [s.value for s in STATUSES] == ["kept", "rolled_back", "failed", "skipped"]
    assert TaskRecord("t1", "lint", "lint:F401", "m.py", "high", status="rolled_back").to_dict()["status"] == "rolled_back"
