"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pyagent.server import chat, responses
from pyagent.server.auth import KeyAuth
from pyagent.server.backend import Backend
from pyagent.server.errors import error_body, install
from pyagent.server.models import ModelCard, ModelList
from pyagent.server.state import ServerState
from pyagent.server.store import ResponseStore

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


DEFAULT_BODY_TIMEOUT = 30.0  # seconds a client may take to send its body (a slow upload holds a connection)


def create_app(
    backend: Backend,
    store: ResponseStore | None,
    *,
    api_keys: Sequence[str] = (),
    served_names: tuple[str, ...] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> FastAPI:
    """An app serving ``backend``. With ``api_keys`` every request (any path) needs ``Authorization:
    Bearer KEY`` for one of them, the interactive docs are off, and each stored response is visible
    only to the key that created it."""
    started = int(time.time())
    keys = tuple(k for k in api_keys if k)
    docs: dict[str, Any] = {"docs_url": None, "redoc_url": None, "openapi_url": None} if keys else {}
    app = FastAPI(title="PyAgent Responses API", version="1", **docs)
    app.state.pyagent = ServerState(backend, store, served_names=served_names)
    install(app)
    app.include_router(responses.router)
    app.include_router(chat.router)

    @app.get("/v1/models", response_model=ModelList)
    async def list_models(request: Request) -> ModelList:
        state: ServerState = request.app.state.pyagent
        return ModelList(data=[ModelCard(id=name, created=started) for name in state.served_names])

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        state: ServerState = request.app.state.pyagent
        return state.backend.health()

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout=body_timeout)
    if keys:
        app.add_middleware(KeyAuth, keys=keys)  # added last: the outermost layer, before any body is read
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, saying what the server really does: invalid requests are 400 with an error body."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        error = {"description": "Invalid request", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses.setdefault("400", error)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


class BodyLimit:
    """Refuse request bodies above ``max_bytes`` with a 413 before anything parses or tokenizes them,
    and bodies not complete within ``timeout`` seconds of the previous chunk with a 408."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = DEFAULT_BODY_TIMEOUT) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)
                return
        seen = 0
        started = False
        body_done = scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS")

        async def limited_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body: disconnect polling, no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                raise _TooLarge(408, f"Request body not received within {self.timeout:g} s.") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # chunked upload without Content-Length
                    raise _TooLarge(413, f"Request body too large: the limit is {self.max_bytes} bytes.")
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge as exc:
            if not started:
                await self._reject(send, exc.status_code)

    async def _reject(self, send: Send, status: int = 413) -> None:
        import orjson

        if status == 408:
            body = orjson.dumps(error_body(f"Request body not received within {self.timeout:g} s.",
                                           code="request_timeout"))
        else:
            body = orjson.dumps(error_body(
                f"Request body too large: the limit is {self.max_bytes} bytes.", code="request_too_large"))
        headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                              (b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """An HTTPException so FastAPI's body parsing re-raises it to the 413 (or 408) handler."""
