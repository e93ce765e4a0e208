"""``POST /v1/chat/completions``: the older API many clients still speak, on the same engine.

Chat completions are not stored; a client that disconnects aborts its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pyagent.server.backend import Backend, GenParams, Prompt, aclose
from pyagent.server.bodies import OffLoopRoute
from pyagent.server.errors import APIError
from pyagent.server.logprobs import format_logprobs
from pyagent.server.models import ChatCompletionCreate, ChatCompletionObject, ChatMessage, ErrorBody
from pyagent.server.run import new_id
from pyagent.server.state import ServerState
from pyagent.server.streaming import sse_data

router = APIRouter(route_class=OffLoopRoute)

# Every generated token searches the text for each stop sequence: a request must not be able to make that
# search the whole server's work (OpenAI takes 4 sequences; clients rarely send more than a handful).
MAX_STOP_SEQUENCES = 32
MAX_STOP_CHARS = 1000


def _messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        text = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    return out


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionObject,
    responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 404: {"model": ErrorBody},
               200: {"content": {"text/event-stream": {}}}},
)
async def create_chat_completion(body: ChatCompletionCreate, request: Request) -> Response:
    state: ServerState = request.app.state.pyagent
    state.check_model(body.model)
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise APIError(400, "Give max_tokens or max_completion_tokens, not both.", param="max_tokens")
    backend = state.backend
    prompt = await backend.build_prompt([], _messages(body.messages), truncation="disabled", reserve=1)
    room = backend.default_max_tokens(len(prompt.token_ids))
    wanted = body.max_completion_tokens or body.max_tokens or room
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not s for s in stop):
        raise APIError(400, "Stop sequences must be non-empty strings.", param="stop")
    if len(stop) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in stop):
        raise APIError(400, f"Give at most {MAX_STOP_SEQUENCES} stop sequences of at most {MAX_STOP_CHARS} "
                       f"characters each (got {len(stop)}, the longest {max(map(len, stop))}).", param="stop")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true.", param="top_logprobs")
    extras: dict[str, Any] = dict(body.sampling_extras())
    schema = body.json_schema()
    if schema is not None:  # off the event loop: the first schema builds the vocabulary index (about 1 s)
        await asyncio.to_thread(backend.check_schema, schema, "response_format")
        extras["json_schema"] = schema
    top_n = body.top_logprobs or 0
    if body.logprobs:
        extras["logprobs"] = top_n
    params = GenParams(
        max_tokens=min(wanted, room),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=stop,
        extras=extras,
        kv_transfer_params=body.kv_transfer_params,
    )
    if (body.min_tokens or 0) > params.max_tokens:
        raise APIError(400, f"min_tokens ({body.min_tokens}) exceeds the {params.max_tokens} tokens this request "
                       "may generate.", param="min_tokens")
    cid, created = new_id("chatcmpl"), int(time.time())
    choices = [_Choice(i, backend, top_n if body.logprobs else None) for i in range(body.n or 1)]
    streams: list[AsyncIterator[Any]] = []
    try:
        for i in range(len(choices)):
            streams.append(await backend.generate(prompt, _nth(params, i), cid if i == 0 else f"{cid}-{i}"))
    except BaseException:
        for started in streams:
            await aclose(started)
        raise
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _stream(backend, prompt, choices, streams, cid, created, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    task = asyncio.ensure_future(_complete(choices, streams))
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.25)
            if not task.done() and await request.is_disconnected():
                task.cancel()  # closes the engine iterators: the requests are aborted, their blocks freed
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return Response(status_code=499)
    finally:
        task.cancel()
    task.result()
    kv_params = choices[0].kv_params
    extra = {} if kv_params is None else {"kv_transfer_params": kv_params}
    return JSONResponse({
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": backend.model_name,
        "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text, "refusal": None},
                     "finish_reason": _finish_reason(c.finish), "logprobs": c.logprobs_body(c.logprobs)}
                    for c in choices],
        "usage": _usage(len(prompt.token_ids), sum(c.n_out for c in choices), choices[0].n_cached),
        **extra,
    })


def _nth(params: GenParams, i: int) -> GenParams:
    """Choice ``i`` of ``n``: with a seed, each choice gets its own (seed + i), so they differ yet repeat;
    only the first one takes part in a KV transfer."""
    if i == 0:
        return params
    seed = None if params.seed is None else params.seed + i
    return dataclasses.replace(params, seed=seed, kv_transfer_params=None)


@dataclass
class _Choice:
    """One of the ``n`` completions of a request, as it accumulates."""

    index: int
    backend: Backend
    top_n: int | None  # None: the client did not ask for logprobs
    text: str = ""
    n_out: int = 0
    n_cached: int = 0
    finish: str | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    kv_params: dict[str, Any] | None = None  # from the KV connector, on the final output

    def take(self, out: Any) -> list[dict[str, Any]]:
        """Record one engine output; returns the log-probability entries of its new tokens."""
        self.text, self.n_out, self.n_cached = out.text, len(out.token_ids), out.num_cached_tokens
        if out.finished:
            self.finish = out.finish_reason
            self.kv_params = getattr(out, "kv_transfer_params", None)
        if self.top_n is None:
            return []
        new = format_logprobs(self.backend.engine.tokenizer.token_bytes, out.logprobs, self.top_n)
        self.logprobs.extend(new)
        return new

    def logprobs_body(self, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        return None if self.top_n is None else {"content": entries, "refusal": None}


def _usage(n_in: int, n_out: int, n_cached: int) -> dict[str, Any]:
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out,
            "prompt_tokens_details": {"cached_tokens": n_cached}}


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


async def _complete(choices: list[_Choice], streams: list[AsyncIterator[Any]]) -> None:
    async def drain(choice: _Choice, stream: AsyncIterator[Any]) -> None:
        async for out in stream:
            choice.take(out)

    try:
        await asyncio.gather(*(drain(c, s) for c, s in zip(choices, streams, strict=True)))
    finally:
        for stream in streams:
            await aclose(stream)


async def _merged(streams: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    """The outputs of several engine streams as they come, tagged with the stream's index."""
    queue: asyncio.Queue[tuple[int, Any] | None] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[Any]) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is None:
                left -= 1
            else:
                yield item
        for t in tasks:
            t.result()  # re-raise an engine failure
    finally:
        for t in tasks:
            t.cancel()


async def _stream(
    backend: Backend, prompt: Prompt, choices: list[_Choice], streams: list[AsyncIterator[Any]], cid: str,
    created: int, include_usage: bool
) -> AsyncIterator[bytes]:
    def chunk(choice: _Choice, delta: dict[str, Any], finish: str | None,
              logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body = {"index": choice.index, "delta": delta, "finish_reason": finish,
                "logprobs": None if logprobs is None else choice.logprobs_body(logprobs)}
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": backend.model_name,
                "choices": [body]}

    try:
        for c in choices:
            yield sse_data(chunk(c, {"role": "assistant", "content": ""}, None))
        async for i, out in _merged(streams):
            c = choices[i]
            new = c.take(out)
            if out.text_delta or new:
                yield sse_data(chunk(c, {"content": out.text_delta}, None, new or None))
            if out.finished:
                yield sse_data(chunk(c, {}, _finish_reason(c.finish)))
        if include_usage:
            usage = _usage(len(prompt.token_ids), sum(c.n_out for c in choices), choices[0].n_cached)
            yield sse_data({"id": cid, "object": "chat.completion.chunk", "created": created,
                            "model": backend.model_name, "choices": [], "usage": usage})
        yield sse_data("[DONE]")
    finally:  # also on client disconnect: closing the engine iterators aborts the requests
        for stream in streams:
            await aclose(stream)
