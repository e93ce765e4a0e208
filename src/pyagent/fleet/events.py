"""Fleet events: one record per thing that happened to a task, for progress display and the log."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from pyagent.model.priority import AgentPriority
from pyagent.redact import redact

if TYPE_CHECKING:
    from pyagent.fleet.handle import TaskHandle

__all__ = ["EventLog", "EventLogError", "EventPublisher", "FleetEvent", "read_events"]

_now = time.time
_PRIORITY_NAMES = tuple(p.name for p in AgentPriority)  # enum .name is slow on the hot path

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


class EventPublisher:
    """The scheduler's event stream: one ``FleetEvent`` per step of a task, to every listener.

    A listener that raises is logged and skipped: a broken progress display must not break the fleet.
    """

    _listeners: list[Callable[[FleetEvent], None]]

    def _emit(self, h: TaskHandle[Any], kind: str, *, outcome: str | None = None, detail: Any = None) -> None:
        ctx = h._context
        duration = None
        if kind == "finished" and h.started is not None and h.finished is not None:
            duration = h.finished - h.started
        lineage: tuple[str, ...]
        if ctx is None:
            root, lineage = h.id, (h.id,)
        else:
            root, lineage = ctx.root_task_id, ctx.lineage_ids()
        if detail is not None:
            detail = redact(detail)  # every consumer (display, log, report) sees the scrubbed text
        event = FleetEvent(
            _now(), kind, h.id, root, h.name, h.kind, outcome, 0, duration, detail, lineage, _PRIORITY_NAMES[h.priority]
        )
        listeners = self._listeners
        if len(listeners) == 1:
            try:
                listeners[0](event)
            except Exception:
                _log_listener_failure()
        else:
            self._deliver(event)

    def _emit_agent(
        self, h: TaskHandle[Any], action: str, outcome: str | None, tokens: int, duration: float | None, detail: Any
    ) -> None:
        if not self._listeners:
            return
        ctx = h.context
        self._deliver(
            FleetEvent(
                time=time.time(),
                kind="agent",
                task_id=h.id,
                root_task_id=ctx.root_task_id,
                agent=ctx.agent,
                action=action,
                outcome=outcome,
                tokens=tokens,
                duration=duration,
                detail=None if detail is None else redact(detail),
                lineage=ctx.lineage_ids(),
                priority=_PRIORITY_NAMES[h.priority],
            )
        )

    def _deliver(self, event: FleetEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                _log_listener_failure()


def _log_listener_failure() -> None:
    """A broken progress display must not break the fleet: log and carry on."""
    logging.getLogger("pyagent.fleet").exception("event listener failed")
