"""One response being generated: a producer task that drives the engine and records the events.

Generation runs in its own task, decoupled from the HTTP request that started it, so that the stream,
a non-streaming waiter, a live replay (``GET ...?stream=true``) and ``POST .../cancel`` all see the same
events. Whoever stops the task (a cancel, the creating client disconnecting) closes the engine's
iterator, which aborts the request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from pyagent.server.backend import Backend, GenParams, Prompt, aclose
from pyagent.server.logprobs import format_logprobs
from pyagent.server.store import ResponseStore
from pyagent.server.streaming import ResponseEventBuilder


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


class ResponseRun:
    """Generates one response and keeps its event log; see the module docstring."""

    def __init__(
        self,
        backend: Backend,
        store: ResponseStore | None,
        response: dict[str, Any],
        prompt: Prompt,
        params: GenParams,
        *,
        on_finish: Callable[[ResponseRun], None] | None = None,
        owner: str = "",
    ) -> None:
        self.backend = backend
        self.owner = owner  # digest of the API key that created it; only that key may see or cancel it
        self.store = store
        self.response = response
        self.prompt = prompt
        self.params = params
        self.builder = ResponseEventBuilder()
        self.item_id = new_id("msg")
        self.done = asyncio.Event()
        self._changed = asyncio.Event()
        self._on_finish = on_finish
        self._cancel_requested = False
        self._task: asyncio.Task[None] | None = None
        self.logprobs: list[dict[str, Any]] = []  # of the generated tokens, when the request asked for them

    @property
    def id(self) -> str:
        return str(self.response["id"])

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.builder.events

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._produce(), name=f"response {self.id}")

    def cancel(self) -> None:
        """Stop generating (idempotent); the response ends with status ``cancelled``."""
        if self._task is not None and not self._task.done():
            self._cancel_requested = True
            self._task.cancel()

    async def follow(self, starting_after: int = -1) -> AsyncIterator[list[dict[str, Any]]]:
        """Every event after sequence number ``starting_after``, live until the response ends, in batches
        of whatever is ready (one write per batch instead of one per token when the server is busy)."""
        index = starting_after + 1
        while True:
            if index < len(self.events):
                batch = self.events[index:]
                index += len(batch)
                yield batch
                continue
            if self.done.is_set():
                return
            self._changed.clear()
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    def _message(self, text: str, status: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}]
        return {"id": self.item_id, "type": "message", "role": "assistant", "status": status, "content": content}

    async def _produce(self) -> None:
        b, resp = self.builder, self.response
        b.created(resp)
        b.in_progress(resp)
        b.item_added(self._message("", "in_progress") | {"content": []})
        b.part_added(self.item_id)
        self._notify()
        text, n_out, n_cached, finish, error = "", 0, 0, None, None
        top_n: int | None = self.params.extras.get("logprobs")  # None: the client did not ask for log-probabilities
        token_bytes = self.backend.engine.tokenizer.token_bytes if top_n is not None else None
        stream = None
        try:
            stream = await self.backend.generate(self.prompt, self.params, self.id)
            async for out in stream:
                new = [] if token_bytes is None or top_n is None else format_logprobs(token_bytes, out.logprobs, top_n)
                self.logprobs.extend(new)
                if out.text_delta or new:
                    b.delta(self.item_id, out.text_delta, new)
                    self._notify()
                text, n_out, n_cached = out.text, len(out.token_ids), out.num_cached_tokens
                if out.finished:
                    finish = out.finish_reason
        except asyncio.CancelledError:
            finish = "cancelled"
        except Exception as exc:  # the engine failed: report it in the response, not as a dropped stream
            error = {"code": "server_error", "message": f"generation failed: {exc}"}
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(aclose(stream))
        try:
            self._finish(text, n_out, n_cached, finish, error)
        finally:  # waiters must never hang, even if storing the result failed
            self.done.set()
            self._notify()
            if self._on_finish is not None:
                self._on_finish(self)

    def _finish(self, text: str, n_out: int, n_cached: int, finish: str | None,
                error: dict[str, str] | None) -> None:
        b, resp = self.builder, self.response
        if error is not None:
            status = "failed"
        elif finish == "cancelled" or finish == "abort" or self._cancel_requested:
            status = "cancelled"
        elif finish == "length":
            status = "incomplete"
        else:
            status = "completed"
        item_status = "completed" if status == "completed" else "incomplete"
        item = self._message(text, item_status, self.logprobs)
        if status in ("completed", "incomplete"):
            b.text_done(self.item_id, text, self.logprobs)
            b.part_done(self.item_id, text, self.logprobs)
            b.item_done(item)
        n_in = len(self.prompt.token_ids)
        resp.update(
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            output=[item] if status in ("completed", "incomplete") or text else [],
            error=error,
            incomplete_details={"reason": "max_output_tokens"} if status == "incomplete" else None,
            usage={
                "input_tokens": n_in,
                "input_tokens_details": {"cached_tokens": n_cached, "cache_write_tokens": 0},
                "output_tokens": n_out,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": n_in + n_out,
            },
        )
        b.finished(resp)
        if self.store is not None and resp.get("store", True):
            self.store.update(resp, b.events)

