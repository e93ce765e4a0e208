"""Delegation: work handed on as a child task through the fleet, inside the parent's chain."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pyagent.fleet.core import TaskControl, TaskFn, TaskHandle

T = TypeVar("T")


class OrchestrationMixin:
    """``delegate`` queues a child whose context is the parent's ``next_level``: lineage, depth limit,
    loop detection and the one budget of the chain all carry over."""

    name: str

    def delegate(
        self, control: TaskControl, action: str, fn: TaskFn[T], *, agent: str | None = None
    ) -> TaskHandle[T]:
        """Hand ``action`` to ``agent`` (this agent by default); chain limits are checked before it is queued."""
        return control.spawn(agent or self.name, action, fn)
