"""FleetExecutionCore (also exported as FleetManager, the seed's name for it): the fleet's one scheduler.

Scheduling in one paragraph: a task's *effective* priority is ``priority + waited / aging_seconds``,
where ``waited`` is the time it spent waiting in the queue (time spent running does not age a task).
Because every waiting task ages at the same rate, the order between two waiting tasks never changes,
so the queue is an ordinary heap keyed by ``(queued - waited before) / aging_seconds - priority``
(aging at O(log n)); a running task's key keeps moving with the clock (it does not age while it runs).
When a task waits, no slot is free, and a running task has a lower base priority *and* a worse key,
that task is asked to suspend; it does so at its next ``checkpoint()``, gives its slot back and
re-enters the heap with the wait it had so far, so its aging carries over (no starvation by preemption).

Running work is preempted at once, not at a checkpoint: when the victim is running SecureShell commands
(registered through its :class:`~pyagent.shell.secure.CommandWatch`), their process trees are frozen
(cgroup v2 freezer, else SIGSTOP of the tree), the slot is handed over immediately, and the trees are
thawed when the victim gets a slot back; the task's timeout and the commands' timeouts stop meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

from pyagent.fleet.errors import FleetClosedError, FleetError, TaskCancelledError, TaskTimedOutError
from pyagent.fleet.events import EventPublisher, FleetEvent
from pyagent.fleet.handle import (
    CANCELLED,
    DONE,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    SUSPENDED,
    TIMED_OUT,
    TaskControl,
    TaskFn,
    TaskHandle,
    TaskInfo,
)
from pyagent.fleet.slots import SlotScheduler
from pyagent.model.context import CascadeContext
from pyagent.model.priority import AgentPriority

if TYPE_CHECKING:
    from pyagent.model.knowledge import KnowledgeBackend

__all__ = [
    "FINAL_STATES",
    "RUNNING",
    "FleetClosedError",
    "FleetError",
    "FleetExecutionCore",
    "FleetManager",
    "SubmitOptions",
    "TaskCancelledError",
    "TaskControl",
    "TaskFn",
    "TaskHandle",
    "TaskInfo",
    "TaskTimedOutError",
]

T = TypeVar("T")


class SubmitOptions(TypedDict, total=False):
    """The options of :meth:`FleetExecutionCore.submit`, which every other way to submit forwards."""

    priority: AgentPriority
    context: CascadeContext | None
    timeout: float | None
    kind: str


class FleetExecutionCore(SlotScheduler, EventPublisher):
    """Priority queue + slots + preemption + registry; see the module docstring for the rules.

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
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
        if isinstance(aging_seconds, bool) or not isinstance(aging_seconds, int | float) or not aging_seconds > 0:
            raise ValueError(f"aging_seconds must be a number > 0, got {aging_seconds!r}")
        self.concurrency = concurrency
        self.aging_seconds = float(aging_seconds)
        self._inv_aging = 1.0 / self.aging_seconds
        self.knowledge = knowledge
        self._listeners: list[Callable[[FleetEvent], None]] = [on_event] if on_event is not None else []
        self._streams: list[asyncio.Queue[FleetEvent | None]] = []
        self._free = concurrency
        self._heap: list[tuple[float, int, TaskHandle[Any]]] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._active: dict[str, TaskHandle[Any]] = {}
        self._running: dict[str, TaskHandle[Any]] = {}
        self._prio_running = [0, 0, 0, 0]
        self._pending_preempt = 0
        self._idle: asyncio.Future[None] | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first submit(); a fleet lives on one loop
        self._cycle = 0
        self.counts: dict[str, int] = {DONE: 0, FAILED: 0, CANCELLED: 0, TIMED_OUT: 0}

    # -- public -------------------------------------------------------------------------------

    @property
    def cycle(self) -> int:
        """Fleet execution cycles so far: one per task that reached a final state."""
        return self._cycle

    def add_listener(self, callback: Callable[[FleetEvent], None]) -> None:
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[FleetEvent], None]) -> None:
        self._listeners.remove(callback)

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
        """Queue ``fn(control)``; it starts as soon as its priority and a free slot allow."""
        if self._closed:
            raise FleetClosedError("the fleet is shut down and takes no new tasks")
        if type(priority) is not AgentPriority:
            priority = AgentPriority.parse(priority)
        _check_submission(name, fn, timeout)
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = _running_loop()
        task_id = f"{self._prefix}-{next(self._ids)}" if context is None else self._context_task_id(context)
        now = loop.time()
        h: TaskHandle[T] = TaskHandle(
            self, task_id, name, kind, priority, fn, context, timeout, now, now * self._inv_aging - priority
        )
        self._active[task_id] = h
        if self._listeners:
            self._emit(h, "queued")
        if self._free > 0 and not self._heap:
            self._take_slot(h)
            self._start(h)
        else:
            self._push(h)
            self._dispatch()
        return h

    def _context_task_id(self, context: CascadeContext) -> str:
        if not isinstance(context, CascadeContext):
            raise TypeError(f"context must be a CascadeContext, got {type(context).__name__}")
        if context.task_id in self._active:
            raise ValueError(f"a task with id {context.task_id} is already active; derive a new context with next_level()")
        return context.task_id

    def bind_loop(self) -> None:
        """Remember the running loop (``FleetManager.__aenter__`` does this) so other threads can submit."""
        self._loop = asyncio.get_running_loop()

    def submit_threadsafe(
        self, name: str, fn: TaskFn[T], **options: Unpack[SubmitOptions]
    ) -> concurrent.futures.Future[TaskHandle[T]]:
        """``submit`` from another thread (e.g. a network receiver); the future yields the handle
        or the validation error."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the fleet is not running on an event loop yet; enter `async with FleetManager()` first")
        result: concurrent.futures.Future[TaskHandle[T]] = concurrent.futures.Future()

        def submit_on_loop() -> None:
            try:
                result.set_result(self.submit(name, fn, **options))
            except BaseException as exc:
                result.set_exception(exc)

        loop.call_soon_threadsafe(submit_on_loop)
        return result

    def active(self) -> list[TaskInfo]:
        """Every task not yet in a final state (queued, running or suspended)."""
        return [
            TaskInfo(h.id, h.name, h.kind, h.priority, h.state, h.submitted, h.started, h.suspensions)
            for h in self._active.values()
        ]

    def get(self, task_id: str) -> TaskHandle[Any] | None:
        return self._active.get(task_id)

    def stats(self) -> dict[str, int]:
        """Counts by state (active ones counted live, final ones cumulative)."""
        out = {QUEUED: 0, RUNNING: 0, SUSPENDED: 0}
        for h in self._active.values():
            out[h.state] += 1
        out.update(self.counts)
        out["cycle"] = self._cycle
        return out

    async def join(self) -> None:
        """Wait until no task is queued, running or suspended."""
        while self._active:
            if self._idle is None or self._idle.done():
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)

    def cancel_all(self) -> int:
        """Cancel every active task; returns how many were asked to stop."""
        return sum(1 for h in list(self._active.values()) if h.cancel())

    async def shutdown(self, *, cancel: bool = False) -> None:
        """Stop taking tasks; finish (or, with ``cancel``, cancel) the ones in flight."""
        self._closed = True
        if cancel:
            self.cancel_all()
        await self.join()
        for queue in self._streams:
            queue.put_nowait(None)

    async def events(self) -> AsyncIterator[FleetEvent]:
        """Every event from now on, as an async iterator that ends when the fleet shuts down
        (for progress displays that prefer ``async for`` to a callback)."""
        queue: asyncio.Queue[FleetEvent | None] = asyncio.Queue()
        if self._closed and not self._active:
            return
        self._streams.append(queue)
        self._listeners.append(queue.put_nowait)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._streams.remove(queue)
            self._listeners.remove(queue.put_nowait)

    async def __aenter__(self) -> FleetExecutionCore:
        self.bind_loop()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown(cancel=exc_type is not None)

    async def run(self, name: str, fn: TaskFn[T], **options: Unpack[SubmitOptions]) -> T:
        """Submit and wait for the result."""
        return await self.submit(name, fn, **options).result()

    # -- running and finishing ----------------------------------------------------------------

    def _start(self, h: TaskHandle[Any]) -> None:
        h.state = RUNNING
        h.started = time.monotonic()
        h.starts += 1
        h._task = self._loop.create_task(self._run(h))  # type: ignore[union-attr]  # set by submit()
        if self._listeners:
            self._emit(h, "started")

    async def _run(self, h: TaskHandle[Any]) -> None:
        control = TaskControl(h)
        try:
            with h._watch:  # SecureShell commands started by this task register here (to be frozen)
                if h._timeout is None:
                    value = await h._fn(control)
                else:
                    async with asyncio.timeout(h._timeout) as cm:
                        h._timeout_cm = cm
                        value = await h._fn(control)
        except asyncio.CancelledError:
            self._finish(h, CANCELLED, None, TaskCancelledError(f"task {h.id} ({h.name}) was cancelled"))
        except TimeoutError as exc:
            if h._timeout_cm is not None and h._timeout_cm.expired():
                self._finish(h, TIMED_OUT, None, TaskTimedOutError(f"task {h.id} ({h.name}) timed out after {h._timeout}s"))
            else:
                self._finish(h, FAILED, None, exc)
        except Exception as exc:
            self._finish(h, FAILED, None, exc)
        except BaseException as exc:  # KeyboardInterrupt/SystemExit: record, then let it propagate
            self._finish(h, FAILED, None, exc)
            raise
        else:
            self._finish(h, DONE, value, None)

    def _finish(self, h: TaskHandle[Any], state: str, value: Any, exc: BaseException | None) -> None:
        if h.state in FINAL_STATES:
            return  # exactly once
        self._settle(h, state, value, exc)
        waiter = h._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        resume = h._resume
        if resume is not None and not resume.done():
            resume.cancel()
        if self._listeners:
            self._emit(h, "finished", outcome=state, detail=None if exc is None else f"{type(exc).__name__}: {exc}")
        children = h._children
        if children is not None:
            h._children = None
            if state != DONE:  # a failed, cancelled or timed-out parent takes its unfinished subtree with it
                for child in children:
                    child.cancel()
        if not self._active and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        if self._heap:
            self._dispatch()

    def _settle(self, h: TaskHandle[Any], state: str, value: Any, exc: BaseException | None) -> None:
        """Record the final state and give back what the task held (slot, frozen trees, closure)."""
        h.state = state
        h._result = value
        h._exc = exc
        h.finished = time.monotonic()
        h._heap_seq = -1
        h._fn = None  # type: ignore[assignment]  # drop the closure early
        h._timeout_cm = None
        if h._frozen:
            h._frozen = False
            h._watch.thaw()
        self._release_slot(h)
        del self._active[h.id]
        self.counts[state] += 1
        self._cycle += 1
        if self.knowledge is not None:
            self.knowledge.tick()

FleetManager = FleetExecutionCore  # the seed's public name; one class, not a wrapper around another


def _check_submission(name: str, fn: object, timeout: float | None) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError("task name must be a non-empty string")
    if not callable(fn):
        raise TypeError(f"task function must be callable, got {type(fn).__name__}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0):
        raise ValueError(f"timeout must be a number > 0 or None, got {timeout!r}")


def _running_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "submit() needs a running event loop: call it from async code, e.g. inside `async with FleetManager() as fleet:`"
        ) from None
