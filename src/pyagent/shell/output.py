"""Bounded capture of a command's output: keeps the head and the tail, counts what was dropped."""

from __future__ import annotations

from collections.abc import Callable

MAX_LINE = 64 * 1024  # a "line" without newline is cut into pieces of this size for streaming


class CappedBuffer:
    """At most ``cap`` bytes in memory: the first half of the output and the most recent half."""

    def __init__(self, cap: int) -> None:
        self.cap = max(cap, 0)
        self._head_cap = self.cap // 2
        self._tail_cap = self.cap - self._head_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self._head_cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk and self._tail_cap:
            self.tail += chunk
            if len(self.tail) > 2 * self._tail_cap:
                del self.tail[: len(self.tail) - self._tail_cap]

    def finish(self) -> None:
        if len(self.tail) > self._tail_cap:
            del self.tail[: len(self.tail) - self._tail_cap]

    @property
    def dropped(self) -> int:
        return self.total - len(self.head) - min(len(self.tail), self._tail_cap)

    def text(self) -> str:
        self.finish()
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        if self.dropped:
            return f"{head}\n[... {self.dropped} bytes dropped by the output cap ...]\n{tail}"
        return head + tail


class LineSplitter:
    """Turns chunks into lines for live streaming; bounded even when a line never ends."""

    def __init__(self, name: str, emit: Callable[[str, str], None]) -> None:
        self.name = name
        self.emit = emit
        self.pending = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.pending += chunk
        while True:
            nl = self.pending.find(b"\n")
            if nl < 0:
                break
            self.emit(self.name, self.pending[:nl].decode("utf-8", "replace"))
            del self.pending[: nl + 1]
        while len(self.pending) >= MAX_LINE:
            self.emit(self.name, self.pending[:MAX_LINE].decode("utf-8", "replace"))
            del self.pending[:MAX_LINE]

    def close(self) -> None:
        if self.pending:
            self.emit(self.name, self.pending.decode("utf-8", "replace"))
            self.pending.clear()
