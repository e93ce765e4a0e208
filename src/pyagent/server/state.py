"""What the routes share: the engine backend, the store, and the responses being generated now."""

from __future__ import annotations

from pyagent.server.backend import Backend
from pyagent.server.errors import APIError
from pyagent.server.run import ResponseRun
from pyagent.server.store import ResponseStore


class ServerState:
    def __init__(self, backend: Backend, store: ResponseStore | None, *, served_names: tuple[str, ...] = ()) -> None:
        self.backend = backend
        self.store = store
        self.served_names = (backend.model_name, *(n for n in served_names if n != backend.model_name))
        self.runs: dict[str, ResponseRun] = {}  # live runs that have a stored response

    def check_model(self, model: str) -> None:
        if model not in self.served_names:
            raise APIError(
                404,
                f"The model '{model}' does not exist; this server serves {', '.join(map(repr, self.served_names))}.",
                param="model",
                code="model_not_found",
            )

    def require_store(self) -> ResponseStore:
        if self.store is None:
            raise APIError(404, "This server keeps no response store (started without one).", code="not_found")
        return self.store

    def start(self, run: ResponseRun) -> None:
        if run.store is not None:
            self.runs[run.id] = run
        run.start()

    def live(self, response_id: str, owner: str) -> ResponseRun | None:
        """The run generating ``response_id`` now, if ``owner`` created it."""
        run = self.runs.get(response_id)
        return run if run is not None and run.owner == owner else None

    def finished(self, run: ResponseRun) -> None:
        self.runs.pop(run.id, None)
