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
import heapq
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar, Unpack

from pyagent.fleet.events import FleetEvent
from pyagent.model.context import CascadeContext, SecurityScope
from pyagent.model.priority import AgentPriority
from pyagent.redact import redact
from pyagent.shell.secure import CommandWatch

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
U = TypeVar("U")
_now = time.time
TaskFn = Callable[["TaskControl"], Awaitable[T]]

QUEUED, RUNNING, SUSPENDED = "queued", "running", "suspended"
DONE, FAILED, CANCELLED, TIMED_OUT = "done", "failed", "cancelled", "timed_out"
FINAL_STATES: frozenset[str] = frozenset({DONE, FAILED, CANCELLED, TIMED_OUT})
_PRIORITY_NAMES = tuple(p.name for p in AgentPriority)  # enum .name is slow on the hot path


class SubmitOptions(TypedDict, total=False):
    """The options of :meth:`FleetExecutionCore.submit`, which every other way to submit forwards."""

    priority: AgentPriority
    context: CascadeContext | None
    timeout: float | None
    kind: str


class FleetError(Exception):
    """Base class of fleet errors."""


class FleetClosedError(FleetError):
    """The fleet was shut down; it takes no new tasks."""


class TaskCancelledError(FleetError):
    """``result()`` of a task that was cancelled before it finished."""


class TaskTimedOutError(FleetError, TimeoutError):
    """``result()`` of a task that ran longer than its timeout."""


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
        core: FleetExecutionCore,
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
    def core(self) -> FleetExecutionCore:
        return self._h._core

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


class FleetExecutionCore:
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
        if not isinstance(name, str) or not name:
            raise ValueError("task name must be a non-empty string")
        if not callable(fn):
            raise TypeError(f"task function must be callable, got {type(fn).__name__}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0):
            raise ValueError(f"timeout must be a number > 0 or None, got {timeout!r}")
        loop = self._loop
        if loop is None or loop.is_closed():
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "submit() needs a running event loop: call it from async code, e.g. inside `async with FleetManager() as fleet:`"
                ) from None
        if context is None:
            task_id = f"{self._prefix}-{next(self._ids)}"
        else:
            if not isinstance(context, CascadeContext):
                raise TypeError(f"context must be a CascadeContext, got {type(context).__name__}")
            task_id = context.task_id
            if task_id in self._active:
                raise ValueError(f"a task with id {task_id} is already active; derive a new context with next_level()")
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

    # -- slots --------------------------------------------------------------------------------

    def _take_slot(self, h: TaskHandle[Any]) -> None:
        h._waited += self._loop.time() - h._queued_at  # type: ignore[union-attr]  # set by submit()
        self._free -= 1
        h._holds_slot = True
        h._counted = True
        self._prio_running[h.priority] += 1
        self._running[h.id] = h

    def _release_slot(self, h: TaskHandle[Any]) -> None:
        if not h._holds_slot:
            return
        self._free += 1
        h._holds_slot = False
        if h._counted:
            h._counted = False
            self._prio_running[h.priority] -= 1
        if h._suspend_requested:
            h._suspend_requested = False
            self._pending_preempt -= 1
        del self._running[h.id]

    def _push(self, h: TaskHandle[Any]) -> None:
        now = h._queued_at = self._loop.time()  # type: ignore[union-attr]  # set by submit()
        h._key = (now - h._waited) * self._inv_aging - h.priority  # aged by its queue time only
        seq = next(self._seq)
        h._heap_seq = seq
        heapq.heappush(self._heap, (h._key, seq, h))

    def _start(self, h: TaskHandle[Any]) -> None:
        h.state = RUNNING
        h.started = time.monotonic()
        h.starts += 1
        h._task = self._loop.create_task(self._run(h))  # type: ignore[union-attr]  # set by submit()
        if self._listeners:
            self._emit(h, "started")

    def _dispatch(self) -> None:
        heap = self._heap
        while self._free > 0 and heap:
            _, seq, h = heapq.heappop(heap)
            if h._heap_seq != seq:
                continue  # cancelled or re-queued since it was pushed
            h._heap_seq = -1
            self._take_slot(h)
            if h.state == QUEUED:
                self._start(h)
            else:
                self._wake(h)
        if heap and self._free == 0 and self._maybe_preempt():
            self._dispatch()  # a running task was frozen: its slot is free now

    def _wake(self, h: TaskHandle[Any]) -> None:
        h.state = RUNNING
        if h._frozen:
            h._frozen = False
            h._watch.thaw()
        if h._timeout_cm is not None and h._timeout_left is not None:
            h._timeout_cm.reschedule(asyncio.get_running_loop().time() + h._timeout_left)
            h._timeout_left = None
        fut = h._resume
        h._resume = None
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self._listeners:
            self._emit(h, "resumed")

    # -- preemption ---------------------------------------------------------------------------

    def _best_waiting(self, skip: int) -> TaskHandle[Any] | None:
        """The (skip+1)-th best live entry in the heap, found by a best-first walk of the heap
        tree (O(skip log skip), not O(n)); stale entries on top are dropped on the way."""
        heap = self._heap
        while heap and heap[0][2]._heap_seq != heap[0][1]:
            heapq.heappop(heap)
        if not heap:
            return None
        if skip == 0:
            return heap[0][2]
        size = len(heap)
        frontier: list[tuple[tuple[float, int, TaskHandle[Any]], int]] = [(heap[0], 0)]
        while frontier:
            entry, i = heapq.heappop(frontier)
            if entry[2]._heap_seq == entry[1]:
                if skip == 0:
                    return entry[2]
                skip -= 1
            for j in (2 * i + 1, 2 * i + 2):
                if j < size:
                    heapq.heappush(frontier, (heap[j], j))
        return None

    def _maybe_preempt(self) -> bool:
        """Picks a victim for the best waiting task; True when it was frozen (its slot is free now),
        False when nothing was done or it was asked to suspend at its next checkpoint."""
        counts = self._prio_running
        if not (counts[0] or counts[1] or counts[2]):
            return False  # nothing below CRITICAL is preemptable: the common fast path
        waiting = self._best_waiting(self._pending_preempt)
        if waiting is None or not any(counts[: waiting.priority]):
            return False
        victim: TaskHandle[Any] | None = None
        worst = -float("inf")
        for h in self._running.values():
            if h._counted and h.priority < waiting.priority and (key := self._running_key(h)) > worst:
                victim, worst = h, key
        if victim is None or not waiting._key < worst:
            return False
        if victim._watch.running:
            self._freeze(victim)
            return True
        victim._suspend_requested = True
        victim._counted = False
        self._prio_running[victim.priority] -= 1
        self._pending_preempt += 1
        return False

    def _pause_timeout(self, h: TaskHandle[Any]) -> None:
        if h._timeout_cm is not None:
            when = h._timeout_cm.when()
            if when is not None:
                h._timeout_left = max(0.0, when - asyncio.get_running_loop().time())
                h._timeout_cm.reschedule(None)

    def _freeze(self, h: TaskHandle[Any]) -> None:
        """Preempts a task while its commands run: freeze their trees, take its slot, re-queue it."""
        h._watch.freeze()
        h._frozen = True
        self._pause_timeout(h)
        h.suspensions += 1
        h.state = SUSPENDED
        self._release_slot(h)
        self._push(h)
        if self._listeners:
            self._emit(h, "suspended", detail="frozen: its running commands were stopped")

    async def _await_resume(self, h: TaskHandle[Any]) -> None:
        if h._resume is None:
            h._resume = asyncio.get_running_loop().create_future()
        await h._resume

    def _running_key(self, h: TaskHandle[Any]) -> float:
        """The key a running task would have in the queue now: it has not aged since it started."""
        return (self._loop.time() - h._waited) * self._inv_aging - h.priority  # type: ignore[union-attr]

    def _outranked(self, h: TaskHandle[Any]) -> bool:
        waiting = self._best_waiting(0)
        return waiting is not None and waiting.priority > h.priority and waiting._key < self._running_key(h)

    async def _suspend(self, h: TaskHandle[Any]) -> None:
        """Called from ``checkpoint()`` of a task asked to give up its slot."""
        if not self._outranked(h):
            # The task that wanted the slot went away (cancelled/started elsewhere): keep running.
            h._suspend_requested = False
            self._pending_preempt -= 1
            h._counted = True
            self._prio_running[h.priority] += 1
            return
        self._pause_timeout(h)
        h.suspensions += 1
        if self._listeners:
            self._emit(h, "suspended")
        await self._park(h)

    def _yield_slot(self, h: TaskHandle[Any]) -> None:
        h.state = SUSPENDED
        self._release_slot(h)
        self._dispatch()

    async def _reacquire(self, h: TaskHandle[Any]) -> None:
        self._push(h)
        h._resume = asyncio.get_running_loop().create_future()
        self._dispatch()
        fut = h._resume
        if fut is not None:
            await fut

    async def _park(self, h: TaskHandle[Any]) -> None:
        h.state = SUSPENDED
        self._release_slot(h)
        self._push(h)
        h._resume = asyncio.get_running_loop().create_future()
        self._dispatch()  # the waiting task takes the slot; we come back when the heap reaches us
        fut = h._resume
        if fut is not None:
            await fut

    # -- running and finishing ----------------------------------------------------------------

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

    # -- events -------------------------------------------------------------------------------

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


FleetManager = FleetExecutionCore  # the seed's public name; one class, not a wrapper around another


def _log_listener_failure() -> None:
    """A broken progress display must not break the fleet: log and carry on."""
    logging.getLogger("pyagent.fleet").exception("event listener failed")
