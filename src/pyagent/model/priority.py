"""Priorities of fleet tasks: a higher value is served first and may preempt a lower one."""

from __future__ import annotations

import enum


class AgentPriority(enum.IntEnum):
    """How urgent a task is; the scheduler compares these as integers."""

    LOW = 0
    STANDARD = 1
    HIGH = 2
    CRITICAL = 3

    @classmethod
    def parse(cls, value: str | int | AgentPriority) -> AgentPriority:
        """Accept a member, its value, or its name in any case (``"low"``, ``"Critical"``)."""
        if isinstance(value, AgentPriority):
            return value
        if isinstance(value, bool):
            raise ValueError(f"not a priority: {value!r}")
        if isinstance(value, int):
            try:
                return cls(value)
            except ValueError:
                raise ValueError(f"priority must be 0..3 (LOW..CRITICAL), got {value}") from None
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                names = ", ".join(m.name.lower() for m in cls)
                raise ValueError(f"unknown priority {value!r}; choose one of {names}") from None
        raise ValueError(f"not a priority: {value!r}")
