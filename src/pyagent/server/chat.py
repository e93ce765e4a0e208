"""``POST /v1/chat/completions``: the older API many clients still speak, on the same engine.

Chat completions are not stored; a client that disconnects aborts its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pyagent.server.backend import Backend, GenParams, Prompt, aclose
from pyagent.server.bodies import OffLoopRoute
from pyagent.server.errors import APIError
from pyagent.server.models import ChatCompletionCreate, ChatCompletionObject, ChatMessage, ErrorBody
from pyagent.server.run import new_id
from pyagent.server.state import ServerState
from pyagent.server.streaming import sse_data

router = APIRouter(route_class=OffLoopRoute)


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
    params = GenParams(
        max_tokens=min(wanted, room),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=stop,
        extras=body.sampling_extras(),
        kv_transfer_params=body.kv_transfer_params,
    )
    if (body.min_tokens or 0) > params.max_tokens:
        raise APIError(400, f"min_tokens ({body.min_tokens}) exceeds the {params.max_tokens} tokens this request "
                       "may generate.", param="min_tokens")
    cid, created = new_id("chatcmpl"), int(time.time())
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _stream(backend, prompt, params, cid, created, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    task = asyncio.ensure_future(_complete(backend, prompt, params, cid))
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.25)
            if not task.done() and await request.is_disconnected():
                task.cancel()  # closes the engine iterator: the request is aborted, its blocks freed
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return Response(status_code=499)
    finally:
        task.cancel()
    text, n_out, n_cached, finish, kv_params = task.result()
    extra = {} if kv_params is None else {"kv_transfer_params": kv_params}
    return JSONResponse({
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": backend.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "finish_reason": finish, "logprobs": None}],
        "usage": _usage(len(prompt.token_ids), n_out, n_cached),
        **extra,
    })


def _usage(n_in: int, n_out: int, n_cached: int) -> dict[str, Any]:
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out,
            "prompt_tokens_details": {"cached_tokens": n_cached}}


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


async def _complete(backend: Backend, prompt: Prompt, params: GenParams, cid: str
                    ) -> tuple[str, int, int, str, dict[str, Any] | None]:
    text, n_out, n_cached, finish, kv_params = "", 0, 0, None, None
    stream = await backend.generate(prompt, params, cid)
    try:
        async for out in stream:
            text, n_out, n_cached = out.text, len(out.token_ids), out.num_cached_tokens
            if out.finished:
                finish = out.finish_reason
                kv_params = getattr(out, "kv_transfer_params", None)
    finally:
        await aclose(stream)
    return text, n_out, n_cached, _finish_reason(finish), kv_params


async def _stream(
    backend: Backend, prompt: Prompt, params: GenParams, cid: str, created: int, include_usage: bool
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": backend.model_name,
                "choices": [choice]}

    stream = await backend.generate(prompt, params, cid)
    n_out, n_cached, finish = 0, 0, None
    try:
        yield sse_data(chunk({"role": "assistant", "content": ""}, None))
        async for out in stream:
            if out.text_delta:
                yield sse_data(chunk({"content": out.text_delta}, None))
            n_out, n_cached = len(out.token_ids), out.num_cached_tokens
            if out.finished:
                finish = out.finish_reason
        yield sse_data(chunk({}, _finish_reason(finish)))
        if include_usage:
            usage = _usage(len(prompt.token_ids), n_out, n_cached)
            yield sse_data({"id": cid, "object": "chat.completion.chunk", "created": created,
                            "model": backend.model_name, "choices": [], "usage": usage})
        yield sse_data("[DONE]")
    finally:  # also on client disconnect: closing the engine iterator aborts the request
        await aclose(stream)

