"""Leases: blocks a finished prefill keeps for a decode peer, released on completion or after a timeout.

vLLM frees the prefill side only when a notification arrives, so a peer that dies (or a request that is
dropped between the two instances) leaks the blocks forever. Here every lease has a deadline; whichever
comes first — the peer's "done", the peer's "release", or the deadline — ends it, exactly once. Reads
happen under the table's lock, so an expiring lease never frees blocks in the middle of a copy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Lease:
    block_ids: tuple[int, ...]
    deadline: float  # time.monotonic()
    digest: str  # the prompt's digest: a reader must name it, so ids alone never reveal another prompt's KV


class LeaseTable:
    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("the lease timeout must be positive")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._ended: set[str] = set()  # ended since the last drain: the engine frees their blocks
        self.expired = 0  # leases that ran out (the peer never came), for /health and tests

    def grant(self, request_id: str, block_ids: Sequence[int], digest: str) -> None:
        with self._lock:
            self._leases[request_id] = Lease(tuple(block_ids), time.monotonic() + self.timeout, digest)

    def read(self, request_id: str, digest: str, block_ids: Sequence[int], copy: Callable[[Sequence[int]], T]) -> T:
        """``copy(block_ids)`` while the lease is held; KeyError/ValueError when it is gone, belongs to
        another prompt or does not cover those blocks."""
        with self._lock:
            lease = self._leases.get(request_id)
            if lease is None or lease.digest != digest:
                raise KeyError(f"no lease for request {request_id!r} and that prompt (finished, released or expired)")
            if not set(block_ids) <= set(lease.block_ids):
                raise ValueError(f"blocks outside the lease of request {request_id!r}")
            return copy(block_ids)

    def release(self, request_id: str, digest: str | None = None) -> bool:
        """End a lease (a peer must name its prompt's digest; None: our own notification path)."""
        with self._lock:
            lease = self._leases.get(request_id)
            if lease is None or (digest is not None and lease.digest != digest):
                return False
            del self._leases[request_id]
            self._ended.add(request_id)
            return True

    def expire(self) -> bool:
        """End the leases past their deadline; True if any ended."""
        now = time.monotonic()
        with self._lock:
            late = [rid for rid, lease in self._leases.items() if lease.deadline <= now]
            for rid in late:
                del self._leases[rid]
                self._ended.add(rid)
            self.expired += len(late)
            return bool(late)

    def drain(self) -> frozenset[str]:
        with self._lock:
            ended, self._ended = frozenset(self._ended), set()
            return ended

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)
