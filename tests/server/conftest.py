"""A real uvicorn server on 127.0.0.1 around the engine STAND-IN (see standin.py) for HTTP-layer tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyagent.server import Backend, LocalServer, ResponseStore, create_app
from tests.server.standin import StandInEngine, StandInParams


@dataclass
class Running:
    url: str
    engine: StandInEngine
    store: ResponseStore


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    servers: list[LocalServer] = []

    def start(
        engine: StandInEngine | None = None, *, api_keys: tuple[str, ...] = (), **store_kw: float
    ) -> Running:
        engine = engine or StandInEngine(stop_after=6)
        store = ResponseStore(tmp_path / f"store{len(servers)}.db", **store_kw)  # type: ignore[arg-type]
        app = create_app(Backend(engine, params_factory=StandInParams), store, api_keys=api_keys)
        server = LocalServer(app).start()
        servers.append(server)
        return Running(server.base_url, engine, store)

    yield start
    for server in servers:
        server.stop()
