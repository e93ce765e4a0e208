"""Server-sent events of the Responses API, in the order the API defines, numbered from 0.

The builder records every event it emits so the whole stream can be stored and replayed later
(``GET /v1/responses/{id}?stream=true&starting_after=N``).
"""

from __future__ import annotations

import copy
from typing import Any

import orjson


def sse(event: dict[str, Any]) -> bytes:
    """One SSE frame; ``event:`` carries the type as the API does."""
    kind = str(event["type"]).encode()
    return b"event: " + kind + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def sse_data(payload: dict[str, Any] | str) -> bytes:
    """A data-only frame (Chat Completions chunks and its ``[DONE]`` sentinel)."""
    data = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


class ResponseEventBuilder:
    """Builds the event sequence for one response with a single assistant message."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._seq = 0

    def _emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type_, "sequence_number": self._seq, **fields}
        self._seq += 1
        self.events.append(event)
        return event

    def created(self, response: dict[str, Any]) -> dict[str, Any]:
        return self._emit("response.created", response=copy.deepcopy(response))

    def in_progress(self, response: dict[str, Any]) -> dict[str, Any]:
        return self._emit("response.in_progress", response=copy.deepcopy(response))

    def item_added(self, item: dict[str, Any]) -> dict[str, Any]:
        return self._emit("response.output_item.added", output_index=0, item=copy.deepcopy(item))

    def part_added(self, item_id: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return self._emit("response.content_part.added", item_id=item_id, output_index=0, content_index=0, part=part)

    def delta(self, item_id: str, text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return self._emit("response.output_text.delta", item_id=item_id, output_index=0, content_index=0,
                          delta=text, logprobs=logprobs or [])

    def text_done(self, item_id: str, text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return self._emit("response.output_text.done", item_id=item_id, output_index=0, content_index=0,
                          text=text, logprobs=logprobs or [])

    def part_done(self, item_id: str, text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}
        return self._emit("response.content_part.done", item_id=item_id, output_index=0, content_index=0, part=part)

    def item_done(self, item: dict[str, Any]) -> dict[str, Any]:
        return self._emit("response.output_item.done", output_index=0, item=copy.deepcopy(item))

    def finished(self, response: dict[str, Any]) -> dict[str, Any]:
        """The terminal event, named for the response's final status."""
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            response["status"], "response.failed"
        )
        return self._emit(kind, response=copy.deepcopy(response))
