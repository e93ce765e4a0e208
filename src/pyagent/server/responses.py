"""The ``/v1/responses`` routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pyagent.server.auth import owner_of
from pyagent.server.backend import GenParams
from pyagent.server.bodies import OffLoopRoute
from pyagent.server.conversation import history_messages, input_items, item_message
from pyagent.server.errors import APIError, not_found
from pyagent.server.models import (
    LOGPROBS_INCLUDE,
    DeletedResponse,
    ErrorBody,
    InputItemList,
    ResponseCreate,
    ResponseObject,
)
from pyagent.server.run import ResponseRun, new_id
from pyagent.server.state import ServerState
from pyagent.server.streaming import sse

router = APIRouter(route_class=OffLoopRoute)
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 404: {"model": ErrorBody}
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.pyagent
    return state


@router.post(
    "/v1/responses",
    response_model=ResponseObject,
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def create_response(body: ResponseCreate, request: Request) -> Response:
    state = _state(request)
    state.check_model(body.model)
    run = await _prepare(state, body, owner_of(request))
    state.start(run)
    if body.stream:
        return StreamingResponse(
            _stream_and_abort_on_disconnect(run), media_type="text/event-stream", headers=SSE_HEADERS
        )
    await wait_or_abort(request, run)
    return JSONResponse(run.response)


async def _prepare(state: ServerState, body: ResponseCreate, owner: str) -> ResponseRun:
    backend = state.backend
    history: list[dict[str, str]] = []
    if body.previous_response_id is not None:
        if state.store is None:
            raise APIError(400, "previous_response_id needs the response store.", param="previous_response_id")
        try:
            chain = await asyncio.to_thread(state.store.chain, body.previous_response_id, owner=owner)
        except KeyError:
            raise not_found("Previous response", body.previous_response_id, "previous_response_id") from None
        if any(r.status in ("in_progress",) for r in chain):
            raise APIError(400, "The previous response is still in progress.", param="previous_response_id")
        store = state.store
        history = await asyncio.to_thread(
            lambda: history_messages(chain, {r.id: store.input_items(r.id) for r in chain})
        )
    items = await asyncio.to_thread(input_items, body.input)
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    messages = history + [item_message(it) for it in items]
    truncation: Literal["auto", "disabled"] = body.truncation or "disabled"
    reserve = 1
    if truncation == "auto" and body.max_output_tokens is not None:
        reserve = min(body.max_output_tokens, max(backend.max_model_len // 2, 1))
    prompt = await backend.build_prompt(system, messages, truncation=truncation, reserve=reserve)
    room = backend.default_max_tokens(len(prompt.token_ids))
    max_tokens = min(body.max_output_tokens or room, room)
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    extras: dict[str, Any] = dict(body.sampling_extras())
    if (body.min_tokens or 0) > max_tokens:
        raise APIError(400, f"min_tokens ({body.min_tokens}) exceeds the {max_tokens} tokens this response "
                       "may generate.", param="min_tokens")
    schema = None if body.text is None else body.text.json_schema()
    if schema is not None:
        await asyncio.to_thread(backend.check_schema, schema, "text.format")
        extras["json_schema"] = schema
    top_n: int | None = None  # None: no log-probabilities asked for
    if body.top_logprobs is not None or LOGPROBS_INCLUDE in (body.include or []):
        top_n = body.top_logprobs or 0
        extras["logprobs"] = top_n
    response = ResponseObject(
        id=new_id("resp"),
        created_at=int(time.time()),
        status="in_progress",
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        model=backend.model_name,
        previous_response_id=body.previous_response_id,
        store=body.store,
        temperature=temperature,
        top_p=top_p,
        truncation=truncation,
        metadata=body.metadata or {},
        top_logprobs=body.top_logprobs,
    ).model_dump(mode="json")
    if body.text is not None and body.text.format is not None:  # echo the format as the API does
        response["text"] = body.text.model_dump(mode="json", by_alias=True, exclude_none=True)
    if body.store and state.store is not None:  # a big input is megabytes of JSON and SQLite: off the loop
        await asyncio.to_thread(state.store.insert, response, items, owner=owner)
    params = GenParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, extras=extras,
                       schema_field="text.format")
    return ResponseRun(backend, state.store if body.store else None, response, prompt, params,
                       on_finish=state.finished, owner=owner)


async def wait_or_abort(request: Request, run: ResponseRun, poll: float = 0.25) -> None:
    """Wait for the run; if the client goes away first, abort it so its KV blocks are freed."""
    waiter = asyncio.ensure_future(run.done.wait())
    try:
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=poll)
            if not waiter.done() and await request.is_disconnected():
                run.cancel()
                await waiter
    finally:
        waiter.cancel()


async def _stream_and_abort_on_disconnect(run: ResponseRun) -> AsyncIterator[bytes]:
    finished = False
    try:
        async for batch in run.follow():
            yield b"".join(map(sse, batch))
        finished = True
    finally:
        if not finished:  # the client went away (Starlette cancelled us): stop generating
            run.cancel()


async def _replay(batches: AsyncIterator[list[dict[str, Any]]]) -> AsyncIterator[bytes]:
    async for batch in batches:
        yield b"".join(map(sse, batch))


async def _stored_events(events: list[dict[str, Any]]) -> AsyncIterator[list[dict[str, Any]]]:
    yield events


@router.get("/v1/responses/{response_id}", response_model=ResponseObject, responses=_ERRORS)
async def get_response(
    response_id: str,
    request: Request,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1)] = None,
) -> Response:
    state = _state(request)
    owner = owner_of(request)
    live = state.live(response_id, owner)
    after = -1 if starting_after is None else starting_after
    if live is not None:
        if stream:
            return StreamingResponse(_replay(live.follow(after)), media_type="text/event-stream",
                                     headers=SSE_HEADERS)
        return JSONResponse(live.response)
    stored = state.require_store().get(response_id, owner=owner)
    if stored is None:
        raise not_found("Response", response_id)
    if stream:
        events = state.require_store().events(response_id, after)
        return StreamingResponse(_replay(_stored_events(events)), media_type="text/event-stream",
                                 headers=SSE_HEADERS)
    return JSONResponse(stored.body)


@router.delete("/v1/responses/{response_id}", response_model=DeletedResponse, responses=_ERRORS)
async def delete_response(response_id: str, request: Request) -> DeletedResponse:
    state = _state(request)
    owner = owner_of(request)
    live = state.live(response_id, owner)
    if live is not None:
        live.cancel()
    if not state.require_store().delete(response_id, owner=owner):
        raise not_found("Response", response_id)
    return DeletedResponse(id=response_id)


@router.post("/v1/responses/{response_id}/cancel", response_model=ResponseObject, responses=_ERRORS)
async def cancel_response(response_id: str, request: Request) -> JSONResponse:
    state = _state(request)
    owner = owner_of(request)
    live = state.live(response_id, owner)
    if live is not None:
        live.cancel()
        await live.done.wait()
        return JSONResponse(live.response)
    stored = state.require_store().get(response_id, owner=owner)
    if stored is None:
        raise not_found("Response", response_id)
    if stored.status == "cancelled":
        return JSONResponse(stored.body)
    raise APIError(400, f"Cannot cancel a response with status '{stored.status}'; only in-progress responses "
                   "can be cancelled.", code="invalid_state")


@router.get("/v1/responses/{response_id}/input_items", response_model=InputItemList, responses=_ERRORS)
async def list_input_items(
    response_id: str,
    request: Request,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> JSONResponse:
    store = _state(request).require_store()
    if store.get(response_id, owner=owner_of(request)) is None:
        raise not_found("Response", response_id)
    try:
        items, has_more = store.list_input_items(response_id, after=after, limit=limit, order=order)
    except KeyError:
        raise not_found("Input item", after or "", "after") from None
    body = {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }
    return JSONResponse(body)
