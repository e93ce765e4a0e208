"""The FastAPI application factory."""

from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pyagent.server import chat, responses
from pyagent.server.backend import Backend
from pyagent.server.errors import APIError, error_body, install
from pyagent.server.models import ModelCard, ModelList
from pyagent.server.state import ServerState
from pyagent.server.store import ResponseStore

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


def create_app(
    backend: Backend,
    store: ResponseStore | None,
    *,
    api_key: str | None = None,
    served_names: tuple[str, ...] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """An app serving ``backend``; with ``api_key`` every /v1 route needs ``Authorization: Bearer KEY``."""
    started = int(time.time())

    async def authenticate(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")

    app = FastAPI(title="PyAgent Responses API", version="1", dependencies=[Depends(authenticate)])
    app.state.pyagent = ServerState(backend, store, served_names=served_names)
    install(app)
    app.include_router(responses.router)
    app.include_router(chat.router)

    @app.get("/v1/models", response_model=ModelList)
    async def list_models(request: Request) -> ModelList:
        state: ServerState = request.app.state.pyagent
        return ModelList(data=[ModelCard(id=name, created=started) for name in state.served_names])

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
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
    """Refuse request bodies above ``max_bytes`` with a 413 before anything parses or tokenizes them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # chunked upload without Content-Length
                    raise _TooLarge(413, f"Request body too large: the limit is {self.max_bytes} bytes.")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        import orjson

        body = orjson.dumps(error_body(
            f"Request body too large: the limit is {self.max_bytes} bytes.", code="request_too_large"))
        headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """An HTTPException so FastAPI's body parsing re-raises it to the 413 handler."""
