"""The unit of work that crosses process and machine boundaries, and the change it produces.

Both travel as plain msgpack-able dicts (``to_wire``/``from_wire``) so a remote node needs nothing but
this module to run a task; a change set's ``digest`` lets a receiver apply it at most once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import blake3
import msgpack

if TYPE_CHECKING:
    from pyagent.model.context import CascadeContext
    from pyagent.model.priority import AgentPriority

from pyagent.model.verification import Usage, Verdict, Verification

__all__ = ["AgentTask", "ChangeSet", "WireError", "content_hash"]


class WireError(ValueError):
    """A wire dict that is not a valid task or change set (missing or mistyped field)."""


def content_hash(data: bytes) -> str:
    """The base hash recorded for a file: blake3 hex of its bytes."""
    return blake3.blake3(data).hexdigest()


def _field(d: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(d, dict):
        raise WireError(f"expected a dict, got {type(d).__name__}")
    if name not in d:
        raise WireError(f"missing field {name!r}")
    value = d[name]
    if not isinstance(value, kind):
        raise WireError(f"field {name!r} has type {type(value).__name__}")
    return value


@dataclass(frozen=True)
class AgentTask:
    """One agent action on one target: what to do, where, with which lineage and budget."""

    id: str
    agent: str
    kind: str
    target: str
    files: tuple[str, ...]
    priority: AgentPriority
    context: CascadeContext
    params: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "kind": self.kind,
            "target": self.target,
            "files": list(self.files),
            "priority": int(self.priority),
            "context": self.context.to_wire(),
            "params": self.params,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> AgentTask:
        from pyagent.model.context import CascadeContext
        from pyagent.model.priority import AgentPriority

        files = _field(d, "files", (list, tuple))
        if not all(isinstance(f, str) for f in files):
            raise WireError("field 'files' must hold strings")
        try:
            priority = AgentPriority(_field(d, "priority", int))
        except ValueError as exc:
            raise WireError(f"bad priority: {exc}") from exc
        return cls(
            id=_field(d, "id", str),
            agent=_field(d, "agent", str),
            kind=_field(d, "kind", str),
            target=_field(d, "target", str),
            files=tuple(files),
            priority=priority,
            context=CascadeContext.from_wire(_field(d, "context", dict)),
            params=dict(_field(d, "params", dict)),
        )


@dataclass(frozen=True)
class ChangeSet:
    """The files a task wants changed, the hashes they were derived from, and the gate's verdict.

    ``changes`` maps POSIX relative paths to new bytes (``None`` deletes); ``reason`` is the gate's
    reason or, when kept, the agent's ``note`` (the sentence for the report and commit message).
    """

    task_id: str
    changes: dict[str, bytes | None]
    base_hashes: dict[str, str]
    verification: Verification = field(default_factory=lambda: Verification(Verdict.NOOP))
    reason: str = ""
    usage: Usage = field(default_factory=Usage)
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.verification.passed

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def digest(self) -> str:
        """Identity of the change itself (task, new contents, bases), independent of dict order."""
        canonical = [
            self.task_id,
            sorted(self.changes.items()),
            sorted(self.base_hashes.items()),
        ]
        return blake3.blake3(msgpack.packb(canonical, use_bin_type=True)).hexdigest()

    def to_wire(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "changes": dict(self.changes),
            "base_hashes": dict(self.base_hashes),
            "verification": self.verification.to_wire(),
            "reason": self.reason,
            "usage": self.usage.to_wire(),
            "note": self.note,
            "digest": self.digest,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ChangeSet:
        changes = _field(d, "changes", dict)
        for path, data in changes.items():
            if not isinstance(path, str) or not (data is None or isinstance(data, bytes)):
                raise WireError(f"bad change entry for {path!r}")
        bases = _field(d, "base_hashes", dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in bases.items()):
            raise WireError("field 'base_hashes' must map strings to strings")
        try:
            verification = Verification.from_wire(_field(d, "verification", dict))
            usage = Usage.from_wire(_field(d, "usage", dict))
        except ValueError as exc:
            raise WireError(str(exc)) from exc
        cs = cls(
            task_id=_field(d, "task_id", str),
            changes=dict(changes),
            base_hashes=dict(bases),
            verification=verification,
            reason=_field(d, "reason", str),
            usage=usage,
            note=_field(d, "note", str),
        )
        sent = d.get("digest")
        if sent is not None and sent != cs.digest:
            raise WireError("digest does not match the change set's content (corrupted in transit?)")
        return cs
