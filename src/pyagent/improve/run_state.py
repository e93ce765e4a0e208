"""A git run's progress on disk, so ``improve --resume`` continues a run that was killed.

``PATH/.pyagent/runs/<run-id>.json`` holds the plan (tasks on the wire), the baseline, the metrics
before, and every finished task's outcome; it is rewritten atomically after each task. A run that
ends (or is interrupted and writes its report) marks it ``done`` or ``interrupted``; a run killed
with SIGKILL leaves it ``running``. Resuming keeps the branch and its commits, does not redo a task
whose outcome is known, and attempts the rest of the same plan.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from pyagent.state.fsutil import atomic_write

__all__ = ["RunState", "latest_unfinished", "state_path"]


def state_path(root: str | os.PathLike[str], run_id: str) -> Path:
    return Path(root) / ".pyagent" / "runs" / f"{run_id}.json"


class RunState:
    """The saved progress of one run (a plain dict kept in step with the file)."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def create(cls, root: str | os.PathLike[str], run_id: str, **data: Any) -> RunState:
        state = cls(state_path(root, run_id), {"run_id": run_id, "status": "running", "outcomes": {}, **data})
        state.save()
        return state

    @classmethod
    def load(cls, path: Path) -> RunState:
        data = orjson.loads(path.read_bytes())
        if not isinstance(data, dict) or "run_id" not in data:
            raise ValueError(f"{path} is not a run state file")
        return cls(path, data)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ignore = self.path.parent.parent / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")  # keeps the user's `git status` clean
        atomic_write(self.path, orjson.dumps(self.data, option=orjson.OPT_INDENT_2), durable=False)

    def set(self, **values: Any) -> None:
        self.data.update(values)
        self.save()

    def record(self, task_id: str, outcome: dict[str, Any]) -> None:
        self.data["outcomes"][task_id] = outcome
        self.save()


def latest_unfinished(root: str | os.PathLike[str]) -> RunState | None:
    """The newest run that did not finish (killed, or interrupted before its last task)."""
    folder = Path(root) / ".pyagent" / "runs"
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.json"), reverse=True):  # run ids start with the UTC time
        try:
            state = RunState.load(path)
        except (OSError, ValueError, orjson.JSONDecodeError):
            continue
        if state.data.get("status") in ("running", "interrupted"):
            return state
    return None
