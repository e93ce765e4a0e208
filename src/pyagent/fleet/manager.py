"""FleetManager: the public face of the fleet (an async context manager around the core)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from pyagent.fleet.core import FleetExecutionCore, TaskControl, TaskFn, TaskHandle, TaskInfo
from pyagent.fleet.events import FleetEvent
from pyagent.model.context import CascadeContext
from pyagent.model.knowledge import InMemoryKnowledge, KnowledgeBackend
from pyagent.model.priority import AgentPriority

__all__ = ["FleetManager"]

T = TypeVar("T")


class FleetManager:
    """Runs agent tasks by priority on a fixed number of slots, with preemption and aging.

    ``async with FleetManager(4) as fleet: h = fleet.submit("lint", fn); await h.result()``.
    Leaving the block waits for every task; leaving it with an exception cancels them.
    """

    def __init__(
        self,
        concurrency: int = 4,
        *,
        aging_seconds: float = 5.0,
        on_event: Callable[[FleetEvent], None] | None = None,
        knowledge: KnowledgeBackend | None = None,
    ) -> None:
        self.knowledge: KnowledgeBackend = knowledge if knowledge is not None else InMemoryKnowledge()
        self.core = FleetExecutionCore(
            concurrency, aging_seconds=aging_seconds, on_event=on_event, knowledge=self.knowledge
        )

    def submit(
        self,
        name: str,
        fn: TaskFn[T],
        *,
        priority: AgentPriority = AgentPriority.STANDARD,
        context: CascadeContext | None = None,
        timeout: float | None = None,
        kind: str = "task",
    ) -> TaskHandle[T]:
        """Queue ``fn(control)``; see ``FleetExecutionCore.submit``."""
        return self.core.submit(name, fn, priority=priority, context=context, timeout=timeout, kind=kind)

    async def __aenter__(self) -> FleetManager:
        self.core.bind_loop()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.core.shutdown(cancel=exc_type is not None)

    @property
    def concurrency(self) -> int:
        return self.core.concurrency

    @property
    def cycle(self) -> int:
        """Fleet execution cycles: one per task that reached a final state."""
        return self.core.cycle

    async def run(
        self,
        name: str,
        fn: Callable[[TaskControl], Awaitable[T]],
        *,
        priority: AgentPriority = AgentPriority.STANDARD,
        context: CascadeContext | None = None,
        timeout: float | None = None,
        kind: str = "task",
    ) -> T:
        """Submit and wait for the result."""
        return await self.core.submit(name, fn, priority=priority, context=context, timeout=timeout, kind=kind).result()

    def submit_many(
        self,
        name: str,
        fns: Iterable[TaskFn[T]],
        *,
        priority: AgentPriority = AgentPriority.STANDARD,
        timeout: float | None = None,
        kind: str = "task",
    ) -> list[TaskHandle[T]]:
        submit = self.core.submit
        return [submit(name, fn, priority=priority, timeout=timeout, kind=kind) for fn in fns]

    def submit_threadsafe(
        self,
        name: str,
        fn: TaskFn[T],
        *,
        priority: AgentPriority = AgentPriority.STANDARD,
        context: CascadeContext | None = None,
        timeout: float | None = None,
        kind: str = "task",
    ) -> concurrent.futures.Future[TaskHandle[T]]:
        """Submit from another thread; see ``FleetExecutionCore.submit_threadsafe``."""
        return self.core.submit_threadsafe(name, fn, priority=priority, context=context, timeout=timeout, kind=kind)

    async def join(self) -> None:
        """Wait until every submitted task reached a final state."""
        await self.core.join()

    def active(self) -> list[TaskInfo]:
        """The active-task registry: every queued, running or suspended task."""
        return self.core.active()

    def get(self, task_id: str) -> TaskHandle[Any] | None:
        return self.core.get(task_id)

    def stats(self) -> dict[str, int]:
        return self.core.stats()

    def cancel_all(self) -> int:
        return self.core.cancel_all()

    def add_listener(self, callback: Callable[[FleetEvent], None]) -> None:
        self.core.add_listener(callback)

    def remove_listener(self, callback: Callable[[FleetEvent], None]) -> None:
        self.core.remove_listener(callback)

    async def shutdown(self, *, cancel: bool = False) -> None:
        await self.core.shutdown(cancel=cancel)

    def events(self) -> AsyncIterator[FleetEvent]:
        """Async iterator over events until the fleet shuts down."""
        return self.core.events()
