"""API keys: every request needs one when the server has any, and each key sees only its own responses."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

import blake3
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from pyagent.server.errors import APIError


def owner_of(request: Request) -> str:
    """Who sent ``request``: a digest of its API key ("" without keys). Stored responses carry it."""
    return str(request.scope.get("state", {}).get(_OWNER, ""))


_OWNER = "pyagent_owner"


class KeyAuth:
    """Refuses every HTTP request without a valid bearer key (401), whatever its path.

    Compares against every key in constant time; records a digest of the matching key (never the
    key) as the request's owner.
    """

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self._keys = [(k.encode(), blake3.blake3(k.encode()).hexdigest()[:32]) for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        owner = None
        for key, digest in self._keys:
            if hmac.compare_digest(token, key) and scheme.lower() == b"bearer":
                owner = digest
        if owner is None:
            error = APIError(401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'.",
                             code="invalid_api_key")
            await error.response()(scope, receive, send)
            return
        scope.setdefault("state", {})[_OWNER] = owner
        await self.app(scope, receive, send)
