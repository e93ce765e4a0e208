"""One task in the fleet: its states, the submitter's ``TaskHandle`` and the running task's ``TaskControl``.

The scheduler (:mod:`pyagent.fleet.core`) owns the handles; a handle only records where its task is
and forwards cancellation, checkpoints and delegation to the scheduler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pyagent.fleet.errors import TaskCancelledError
from pyagent.model.context import CascadeContext, SecurityScope
from pyagent.model.priority import AgentPriority
from pyagent.shell.secure import CommandWatch

__all__ = [
    "CANCELLED",
    "DONE",
    "FAILED",
    "FINAL_STATES",
    "QUEUED",
    "RUNNING",
    "SUSPENDED",
    "TIMED_OUT",
    "TaskControl",
    "TaskFn",
    "TaskHandle",
    "TaskInfo",
]

T = TypeVar("T")
U = TypeVar("U")
TaskFn = Callable[["TaskControl"], Awaitable[T]]

QUEUED, RUNNING, SUSPENDED = "queued", "running", "suspended"
DONE, FAILED, CANCELLED, TIMED_OUT = "done", "failed", "cancelled", "timed_out"
FINAL_STATES: frozenset[str] = frozenset({DONE, FAILED, CANCELLED, TIMED_OUT})


class _Scheduler(Protocol):
    """What a handle asks of the scheduler that owns it (:class:`pyagent.fleet.core.FleetExecutionCore`)."""

    def submit(
        self,
        name: str,
        fn: TaskFn[U],
        *,
        priority: AgentPriority = ...,
        context: CascadeContext | None = ...,
        timeout: float | None = ...,
        kind: str = ...,
    ) -> TaskHandle[U]: ...

    def _finish(self, h: TaskHandle[Any], state: str, value: Any, exc: BaseException | None) -> None: ...

    async def _await_resume(self, h: TaskHandle[Any]) -> None: ...

    async def _suspend(self, h: TaskHandle[Any]) -> None: ...

    def _yield_slot(self, h: TaskHandle[Any]) -> None: ...

    async def _reacquire(self, h: TaskHandle[Any]) -> None: ...

    def _emit_agent(
        self, h: TaskHandle[Any], action: str, outcome: str | None, tokens: int, duration: float | None, detail: Any
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A snapshot of one active task, for registries and progress displays."""

    id: str
    name: str
    kind: str
    priority: AgentPriority
    state: str
    submitted: float
    started: float | None
    suspensions: int


class TaskHandle(Generic[T]):
    """The submitter's view of a task: its state, its result, and a way to cancel it."""

    __slots__ = (
        "_cancel_requested",
        "_children",
        "_context",
        "_core",
        "_counted",
        "_exc",
        "_fn",
        "_frozen",
        "_heap_seq",
        "_holds_slot",
        "_key",
        "_queued_at",
        "_result",
        "_resume",
        "_suspend_requested",
        "_task",
        "_timeout",
        "_timeout_cm",
        "_timeout_left",
        "_waited",
        "_waiter",
        "_watch",
        "finished",
        "id",
        "kind",
        "name",
        "priority",
        "started",
        "starts",
        "state",
        "submitted",
        "suspensions",
    )

    def __init__(
        self,
        core: _Scheduler,
        task_id: str,
        name: str,
        kind: str,
        priority: AgentPriority,
        fn: TaskFn[T],
        context: CascadeContext | None,
        timeout: float | None,
        submitted: float,
        key: float,
    ) -> None:
        self._core = core
        self.id = task_id
        self.name = name
        self.kind = kind
        self.priority = priority
        self.state = QUEUED
        self._fn = fn
        self._context = context
        self._timeout = timeout
        self.submitted = submitted
        self._key = key
        self._queued_at = submitted  # when it last entered the queue (loop time)
        self._waited = 0.0  # queue time before that: what it has aged so far
        self.started: float | None = None
        self.finished: float | None = None
        self.starts = 0
        self.suspensions = 0
        self._heap_seq = -1
        self._holds_slot = False
        self._counted = False
        self._suspend_requested = False
        self._cancel_requested = False
        self._children: list[TaskHandle[Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._result: Any = None
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._resume: asyncio.Future[None] | None = None
        self._timeout_cm: asyncio.Timeout | None = None
        self._timeout_left: float | None = None
        self._watch = CommandWatch()
        self._frozen = False

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id} {self.name!r} {self.priority.name} {self.state}>"

    @property
    def context(self) -> CascadeContext:
        """The task's cascade context (a root context is made on first use if none was given)."""
        ctx = self._context
        if ctx is None:
            ctx = self._context = CascadeContext.root(self.name, action=self.kind, task_id=self.id)
        return ctx

    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def error(self) -> BaseException | None:
        """The exception a finished task ended with, if any."""
        return self._exc

    async def result(self) -> T:
        """Wait for the task to finish; return its value or raise what it raised
        (``TaskCancelledError`` / ``TaskTimedOutError`` for those outcomes)."""
        if self.state not in FINAL_STATES:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        """Cancel the task wherever it is; ``False`` if it already finished."""
        if self.state in FINAL_STATES:
            return False
        if self.state == QUEUED:
            self._core._finish(self, CANCELLED, None, TaskCancelledError(f"task {self.id} ({self.name}) was cancelled"))
            return True
        self._cancel_requested = True
        task = self._task
        if task is not None:
            task.cancel()
            # A task cancelled before its first step never enters its body; finish it from here.
            task.add_done_callback(self._cancelled_callback)
        return True

    def _cancelled_callback(self, _task: asyncio.Task[None]) -> None:
        self._core._finish(self, CANCELLED, None, TaskCancelledError(f"task {self.id} ({self.name}) was cancelled"))


class TaskControl:
    """What a running task receives: its context and priority, and the cooperative hooks."""

    __slots__ = ("_h",)

    def __init__(self, handle: TaskHandle[Any]) -> None:
        self._h = handle

    @property
    def task_id(self) -> str:
        return self._h.id

    @property
    def name(self) -> str:
        return self._h.name

    @property
    def kind(self) -> str:
        return self._h.kind

    @property
    def priority(self) -> AgentPriority:
        return self._h.priority

    @property
    def context(self) -> CascadeContext:
        return self._h.context

    @property
    def suspend_requested(self) -> bool:
        """True when a higher-priority task is waiting for this task's slot."""
        return self._h._suspend_requested

    async def checkpoint(self) -> None:
        """A safe point: yields to the loop, suspends here while preempted, and raises
        ``BudgetExceeded``/``CircuitOpen`` once the chain must stop."""
        h = self._h
        if h._context is not None:
            h._context.check()  # budget spent or circuit open: the chain stops here, with the reason
        if h._frozen:  # preempted while its commands ran: it holds no slot, wait for one
            await h._core._await_resume(h)
        if h._suspend_requested:
            await h._core._suspend(h)
        else:
            await asyncio.sleep(0)
            if h._suspend_requested:
                await h._core._suspend(h)

    def emit(
        self, action: str, *, outcome: str | None = None, tokens: int = 0, duration: float | None = None, detail: Any = None
    ) -> None:
        """Publish an agent event (e.g. an LLM call) on the fleet's event stream."""
        self._h._core._emit_agent(self._h, action, outcome, tokens, duration, detail)

    def spawn(
        self,
        agent: str,
        action: str,
        fn: TaskFn[U],
        *,
        priority: AgentPriority | None = None,
        timeout: float | None = None,
        scope: SecurityScope | None = None,
    ) -> TaskHandle[U]:
        """Delegate a child task through the fleet; its context is ``context.next_level(agent, action)``
        (so depth, loop, circuit and budget limits apply before anything is queued)."""
        h = self._h
        child = self.context.next_level(agent, action, scope=scope)
        handle = h._core.submit(
            agent, fn, priority=h.priority if priority is None else priority, context=child, timeout=timeout, kind=action
        )
        if h._children is None:
            h._children = []
        h._children.append(handle)
        return handle

    async def wait(self, other: TaskHandle[U]) -> U:
        """Wait for another task (typically a child) without holding a slot meanwhile,
        so a parent waiting on its children cannot deadlock a small fleet."""
        if other.done():
            return await other.result()
        core = self._h._core
        core._yield_slot(self._h)
        if other._waiter is None:
            other._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(other._waiter)  # cancelled here: nothing to give back, we hold no slot
        await core._reacquire(self._h)
        return await other.result()
