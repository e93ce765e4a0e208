"""Hybrid logical clock: the total order that decides last-writer-wins between replicas.

A timestamp is ``(wall milliseconds, counter, node id)``, encoded as one fixed-width string so
SQLite and Python compare it the same way. ``now()`` never goes backwards on a node even if the
wall clock does, and ``observe()`` moves the clock past every timestamp merged from a peer, so a
write made after seeing a peer's write always orders after it (causality), while concurrent
writes are ordered by wall time and, on a tie, by node id: every replica picks the same winner.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

__all__ = ["HybridClock", "parse_stamp"]

_WALL_DIGITS = 15
_COUNTER_DIGITS = 8
_STAMP = re.compile(rf"^(\d{{{_WALL_DIGITS}}})(\d{{{_COUNTER_DIGITS}}})([0-9a-f]{{1,64}})$")


def _encode(wall: int, counter: int, node: str) -> str:
    return f"{wall:0{_WALL_DIGITS}d}{counter:0{_COUNTER_DIGITS}d}{node}"


def parse_stamp(stamp: str) -> tuple[int, int, str]:
    """(wall ms, counter, node) of a stamp; ValueError for anything a peer should not send."""
    match = _STAMP.match(stamp) if isinstance(stamp, str) else None
    if match is None:
        raise ValueError(f"not a hybrid-logical-clock stamp: {stamp!r}")
    return int(match.group(1)), int(match.group(2)), match.group(3)


class HybridClock:
    """One node's clock (thread-safe). ``node`` must be lowercase hex (a Voyager node id)."""

    def __init__(self, node: str, *, wall: Callable[[], float] = time.time, start: str | None = None) -> None:
        if not re.fullmatch(r"[0-9a-f]{1,64}", node):
            raise ValueError(f"node id must be lowercase hex, got {node!r}")
        self.node = node
        self._wall = wall
        self._lock = threading.Lock()
        self._last = (0, 0)
        if start:
            self.observe(start)

    def now(self) -> str:
        """A stamp greater than every stamp this clock issued or observed."""
        wall = int(self._wall() * 1000)
        with self._lock:
            last_wall, counter = self._last
            self._last = (wall, 0) if wall > last_wall else (last_wall, counter + 1)
            return _encode(*self._last, self.node)

    def observe(self, stamp: str) -> None:
        """Move past a stamp seen from a peer (or read back from the store)."""
        wall, counter, _node = parse_stamp(stamp)
        with self._lock:
            if (wall, counter) > self._last:
                self._last = (wall, counter)
