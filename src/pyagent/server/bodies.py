"""JSON request bodies decoded off the event loop.

Decoding a multi-megabyte body holds the GIL for its whole duration (~80 ms for 7 MB here), so a
thread does not help: every other request waits. Bodies above ``LARGE_BODY`` bytes are decoded in a
worker process instead; only unpickling the result (a fast copy) happens here. The routers use
``OffLoopRoute`` so FastAPI's own body handling reads through :class:`OffLoopRequest`.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

LARGE_BODY = 256 * 1024
_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _decoder() -> ProcessPoolExecutor:
    """One spawned worker for the whole process, made on the first large body."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


class OffLoopRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) < LARGE_BODY:
                self._json = json.loads(body)
            else:  # a JSONDecodeError raised there is re-raised here, so FastAPI still answers 400
                self._json = await asyncio.get_running_loop().run_in_executor(_decoder(), json.loads, body)
        return self._json


class OffLoopRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(OffLoopRequest(request.scope, request.receive))

        return route
