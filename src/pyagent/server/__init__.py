"""``pyagent serve``: an OpenAI Responses API (and Chat Completions) server on the paged-attention engine.

``create_app`` builds the FastAPI app; ``ResponseStore`` is its SQLite store; ``start_local_server`` runs
one in-process for agents (``pyagent improve --llm local:DIR``).
"""

from __future__ import annotations

from pyagent.server.app import create_app
from pyagent.server.backend import Backend
from pyagent.server.local import LocalServer, start_local_server
from pyagent.server.store import ResponseStore

__all__ = ["Backend", "LocalServer", "ResponseStore", "create_app", "start_local_server"]
