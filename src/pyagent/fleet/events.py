"""Fleet events: one record per thing that happened to a task, for progress display and the log."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from pyagent.redact import redact

__all__ = ["EventLog", "EventLogError", "FleetEvent", "read_events"]

EventCallback = Callable[["FleetEvent"], None]


@dataclass(slots=True)
class FleetEvent:
    """Something that happened to a task (treat as read-only; not frozen because a frozen
    dataclass costs several times more to build, and the fleet builds three per task).

    ``kind`` is one of ``queued``, ``started``, ``suspended``, ``resumed``, ``finished`` (then
    ``outcome`` is the final state) or ``agent`` for events an agent emits itself.
    """

    time: float
    kind: str
    task_id: str
    root_task_id: str
    agent: str
    action: str
    outcome: str | None = None
    tokens: int = 0
    duration: float | None = None
    detail: Any = None
    lineage: tuple[str, ...] = ()
    priority: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "kind": self.kind,
            "task_id": self.task_id,
            "root_task_id": self.root_task_id,
            "lineage": list(self.lineage),
            "agent": self.agent,
            "action": self.action,
            "priority": self.priority,
            "outcome": self.outcome,
            "tokens": self.tokens,
            "duration": self.duration,
            "detail": self.detail,
        }


class EventLogError(ValueError):
    """A line of an event log could not be read back."""


def _default(obj: Any) -> Any:
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return repr(obj)


class EventLog:
    """Appends every event as one JSON line (orjson), redacted first; thread-safe.

    Use it directly as an ``on_event`` callback: ``FleetManager(on_event=EventLog(path))``.
    Each line is flushed so a crash loses at most the event being written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = open(self.path, "ab")  # noqa: SIM115 - closed in close()

    def __call__(self, event: FleetEvent | dict[str, Any]) -> None:
        self.write(event)

    def write(self, event: FleetEvent | dict[str, Any]) -> None:
        record = event.to_dict() if isinstance(event, FleetEvent) else dict(event)
        record.setdefault("time", time.time())
        line = orjson.dumps(redact(record), default=_default, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
        with self._lock:
            if self._fh is None:
                raise ValueError(f"event log {self.path} is closed")
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Parse an event log back; a torn last line (crash mid-write) is skipped, other bad lines raise."""
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    last = len(lines) - 1
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if number - 1 == last:
                return  # torn final write
            raise EventLogError(f"{path}:{number}: not a JSON line ({exc})") from None
        if not isinstance(record, dict):
            raise EventLogError(f"{path}:{number}: expected a JSON object")
        yield record
