"""What the fleet raises: a closed fleet, and the outcomes ``TaskHandle.result()`` reports as errors."""

from __future__ import annotations

__all__ = ["FleetClosedError", "FleetError", "TaskCancelledError", "TaskTimedOutError"]


class FleetError(Exception):
    """Base class of fleet errors."""


class FleetClosedError(FleetError):
    """The fleet was shut down; it takes no new tasks."""


class TaskCancelledError(FleetError):
    """``result()`` of a task that was cancelled before it finished."""


class TaskTimedOutError(FleetError, TimeoutError):
    """``result()`` of a task that ran longer than its timeout."""
