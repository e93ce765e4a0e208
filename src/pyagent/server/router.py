"""The disaggregation router: one OpenAI-compatible endpoint in front of a prefill and a decode instance.

A chat completion goes first to the prefill instance with ``max_tokens=1`` and ``kv_transfer_params =
{"do_remote_decode": true}``: it computes the prompt, samples the first token and leases the prompt's
KV blocks. The router then sends the client's request to the decode instance with the parameters the
prefill instance returned; the decode instance loads the blocks it lacks and streams the answer, which
the router passes through byte for byte. The client's ``Authorization`` header goes to both instances
(they check it; the router holds no key). If the prefill instance is unreachable the decode instance
serves the request alone, so a dead prefill instance costs speed, not answers. Every other route is
passed to the decode instance unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pyagent.server.errors import error_body

log = logging.getLogger(__name__)
_HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "accept-encoding"}


def _forward_headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}


def create_router_app(prefill_url: str, decode_url: str, *, timeout: float = 600.0) -> Starlette:
    """``prefill_url``/``decode_url``: base URLs of the instances (``http://HOST:PORT``, with or without /v1)."""
    prefill = prefill_url.rstrip("/").removesuffix("/v1")
    decode = decode_url.rstrip("/").removesuffix("/v1")
    client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0), limits=httpx.Limits(
        max_connections=512, max_keepalive_connections=64))

    async def relay(upstream: httpx.Request) -> Response:
        # Shielded: once the prefill instance leased blocks, the decode instance must hear of the request
        # even if our client has gone, so that its abort (it sees the closed connection) ends the lease now
        # rather than at the lease timeout.
        sending = asyncio.ensure_future(client.send(upstream, stream=True))
        try:
            reply = await asyncio.shield(sending)
        except asyncio.CancelledError:
            sending.add_done_callback(_close_reply)
            raise
        except httpx.HTTPError as exc:
            err = error_body(f"the decode instance is unreachable: {exc}", code="upstream_unavailable")
            return Response(orjson.dumps(err), status_code=502, media_type="application/json")
        return _Relay(reply)

    async def chat(request: Request) -> Response:
        raw = await request.body()
        headers = _forward_headers(request)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):  # let the decode instance word the error
            return await relay(client.build_request("POST", f"{decode}/v1/chat/completions", content=raw,
                                                    headers=headers))
        first = await _prefill(client, prefill, body, headers)
        if isinstance(first, Response):
            return first
        body = {k: v for k, v in body.items() if k != "kv_transfer_params"}  # only the prefill's own count
        if first is not None:
            body["kv_transfer_params"] = first
        return await relay(client.build_request("POST", f"{decode}/v1/chat/completions",
                                                content=orjson.dumps(body), headers=headers))

    async def passthrough(request: Request) -> Response:
        url = f"{decode}{request.url.path}"
        if request.url.query:
            url += f"?{request.url.query}"
        return await relay(client.build_request(request.method, url, content=await request.body(),
                                                headers=_forward_headers(request)))

    methods = ["GET", "POST", "DELETE"]
    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/{path:path}", passthrough, methods=methods)])


_closing: set[asyncio.Future[None]] = set()


def _close_reply(task: asyncio.Future[httpx.Response]) -> None:
    if not task.cancelled() and task.exception() is None:
        closing = asyncio.ensure_future(task.result().aclose())
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)


class _Relay(Response):
    """The decode instance's response, passed through as it arrives; when the client disconnects the
    upstream connection is closed at once (the decode instance then aborts the request and frees it)."""

    def __init__(self, reply: httpx.Response) -> None:
        self.reply = reply
        self.status_code = reply.status_code
        self.background = None
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()
                            if k.lower() not in _HOP_HEADERS]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.reply.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(watch())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.reply.aclose()


async def _prefill(client: httpx.AsyncClient, prefill: str, body: dict[str, Any], headers: dict[str, str]
                   ) -> dict[str, Any] | Response | None:
    """Run the prompt on the prefill instance: its kv_transfer_params, its error response (a bad request is
    bad on both instances), or None when it cannot help (unreachable, failing)."""
    first = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "max_completion_tokens")}
    first["max_tokens"] = 1
    if isinstance(body.get("min_tokens"), int):
        first["min_tokens"] = min(body["min_tokens"], 1)  # the first token still may not be EOS
    first["kv_transfer_params"] = {"do_remote_decode": True}
    try:
        reply = await client.post(f"{prefill}/v1/chat/completions", content=orjson.dumps(first), headers=headers)
    except httpx.HTTPError as exc:
        log.warning("prefill instance unreachable (%s): the decode instance computes the prompt", exc)
        return None
    if 400 <= reply.status_code < 500:
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")
    if reply.status_code != 200:
        log.warning("prefill instance answered %d: the decode instance computes the prompt", reply.status_code)
        return None
    params = reply.json().get("kv_transfer_params")
    return params if isinstance(params, dict) else None
