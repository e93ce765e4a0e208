"""Slots and preemption: how the scheduler hands out its slots and takes one back for a higher priority.

A waiting task outranks a running one when its base priority is higher *and* its aged key is
better (see :mod:`pyagent.fleet.core`). A victim running SecureShell commands is frozen at once (its
process trees stopped, its timeout paused, its slot handed over); any other victim is asked to
suspend at its next ``checkpoint()``. Either way it re-enters the queue with the wait it had so far.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import TYPE_CHECKING, Any

from pyagent.fleet.handle import QUEUED, RUNNING, SUSPENDED, TaskHandle

__all__ = ["SlotScheduler"]


class SlotScheduler:
    """The slot and preemption half of :class:`~pyagent.fleet.core.FleetExecutionCore`."""

    _loop: asyncio.AbstractEventLoop | None
    _inv_aging: float
    _free: int
    _heap: list[tuple[float, int, TaskHandle[Any]]]
    _seq: itertools.count[int]
    _running: dict[str, TaskHandle[Any]]
    _prio_running: list[int]
    _pending_preempt: int
    _listeners: list[Any]

    if TYPE_CHECKING:  # provided by FleetExecutionCore and EventPublisher

        def _start(self, h: TaskHandle[Any]) -> None: ...

        def _emit(self, h: TaskHandle[Any], kind: str, *, outcome: str | None = None, detail: Any = None) -> None: ...

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
