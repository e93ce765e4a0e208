"""What the gate concluded about one change, and what producing it cost.

Both cross process and machine boundaries inside a :class:`~pyagent.model.task.ChangeSet`, so
they are frozen and travel as plain dicts (``to_wire``/``from_wire``); a reader of a report or a
peer's answer gets the same fields a local run used, never a dict whose keys drifted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Check", "RemoteRun", "Usage", "Verdict", "Verification"]


class _WireEnum(enum.StrEnum):
    @classmethod
    def from_wire(cls, value: object) -> Any:
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        raise ValueError(f"{cls.__name__.lower()} must be one of {[m.value for m in cls]}, got {value!r}")


class Verdict(_WireEnum):
    """How an executor's attempt at a task ended, before the run merges anything."""

    VERIFIED = "verified"  # the gate passed the change
    REJECTED = "rejected"  # the gate refused it (``check`` says which check)
    ERROR = "error"  # the agent or governance refused or failed; nothing to judge
    NOOP = "noop"  # the agent changed nothing


class Check(_WireEnum):
    """The gate check a rejected change failed; ``NONE`` when none failed."""

    NONE = ""
    PARSE = "parse"
    RUFF = "ruff"
    COMPLEXITY = "complexity"
    MI = "mi"
    TESTS = "tests"


def _mapping(d: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = d.get(name, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"field {name!r} must be a mapping, got {type(value).__name__}")
    return dict(value)


@dataclass(frozen=True)
class RemoteRun:
    """Where a peer ran a task: its worker's pid and the lineage it ran under (checked by the origin);
    ``started``/``ended`` (wall-clock seconds) when the worker says when it ran (a Ray worker does)."""

    pid: int
    root_task_id: str
    lineage: tuple[str, ...]
    started: float | None = None
    ended: float | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": self.pid, "root_task_id": self.root_task_id, "lineage": list(self.lineage)}
        if self.started is not None:
            out["started"], out["ended"] = self.started, self.ended
        return out

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> RemoteRun:
        pid, root, lineage = d.get("pid"), d.get("root_task_id"), d.get("lineage")
        if not isinstance(pid, int) or not isinstance(root, str) or not isinstance(lineage, (list, tuple)):
            raise ValueError(f"bad remote run record {dict(d)!r}")
        if not all(isinstance(x, str) for x in lineage):
            raise ValueError("a remote run's lineage must hold task ids")
        started, ended = d.get("started"), d.get("ended")
        for value in (started, ended):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"a remote run's start and end must be times, got {value!r}")
        return cls(pid, root, tuple(lineage), started, ended)


@dataclass(frozen=True)
class Verification:
    """The gate's judgement of one change: verdict, the reason in words, the failed check, and the
    measurements behind it (``metrics`` per file, ``tests`` the test run's summary).

    ``remote`` is set by the peer that ran the task, ``node`` by the origin that received it.
    """

    verdict: Verdict
    reason: str = ""
    check: Check = Check.NONE
    metrics: Mapping[str, Any] = field(default_factory=dict)
    tests: Mapping[str, Any] = field(default_factory=dict)
    remote: RemoteRun | None = None
    node: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.VERIFIED

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "passed": self.passed,
            "status": self.verdict.value,
            "reason": self.reason,
            "check": self.check.value,
            "metrics": dict(self.metrics),
            "tests": dict(self.tests),
        }
        if self.remote is not None:
            out["remote"] = self.remote.to_wire()
        if self.node is not None:
            out["node"] = self.node
        return out

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Verification:
        if not isinstance(d, Mapping):
            raise ValueError(f"a verification must be a mapping, got {type(d).__name__}")
        reason, node, remote = d.get("reason", ""), d.get("node"), d.get("remote")
        if not isinstance(reason, str) or not (node is None or isinstance(node, str)):
            raise ValueError("a verification's reason and node must be strings")
        if remote is not None and not isinstance(remote, Mapping):
            raise ValueError("a verification's remote record must be a mapping")
        return cls(
            verdict=Verdict.from_wire(d.get("status")),
            reason=reason,
            check=Check.from_wire(d.get("check", "")),
            metrics=_mapping(d, "metrics"),
            tests=_mapping(d, "tests"),
            remote=RemoteRun.from_wire(remote) if remote is not None else None,
            node=node,
        )


@dataclass(frozen=True)
class Usage:
    """LLM use behind one change: tokens, dollars and calls (all zero for the deterministic agents)."""

    tokens: int = 0
    cost: float = 0.0
    calls: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.tokens + other.tokens, self.cost + other.cost, self.calls + other.calls)

    def to_wire(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "cost": self.cost, "calls": self.calls}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Usage:
        if not isinstance(d, Mapping):
            raise ValueError(f"a usage must be a mapping, got {type(d).__name__}")
        tokens, cost, calls = d.get("tokens", 0), d.get("cost", 0.0), d.get("calls", 0)
        if not isinstance(tokens, int) or not isinstance(calls, int) or not isinstance(cost, (int, float)):
            raise ValueError(f"bad usage record {dict(d)!r}")
        if tokens < 0 or calls < 0 or cost < 0:
            raise ValueError(f"usage cannot be negative: {dict(d)!r}")
        return cls(tokens, float(cost), calls)
