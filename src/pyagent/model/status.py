"""The words a run's records use, each defined once: what became of a task, and why a planned change was left out.

Both are ``StrEnum``s: a member is its own wire form (JSON, msgpack), and ``Status.from_wire`` checks one read back.
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    """What became of one task (the report, the knowledge store and the progress display all use these)."""

    KEPT = "kept"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    SKIPPED = "skipped"

    @classmethod
    def from_wire(cls, value: object) -> Status:
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        raise ValueError(f"status must be one of {[s.value for s in cls]}, got {value!r}")


class SkipReason(enum.StrEnum):
    """Why the planner left a candidate change out of the plan."""

    KNOWN_FAILURE = "known_failure"  # the same change failed on the same content before (memory)
    UNREADABLE = "unreadable"  # the target file could not be read
    OVER_LIMIT = "over_limit"  # beyond --max-tasks
