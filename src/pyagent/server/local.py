"""Run the server in-process: uvicorn on 127.0.0.1 in a background thread (for agents and tests).

The socket is bound before the thread starts (port 0 = a free port chosen by the OS), so the returned
URL is ready to use and no port can be raced for.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from pyagent.server.app import create_app
from pyagent.server.backend import Backend
from pyagent.server.store import ResponseStore

if TYPE_CHECKING:
    from pyagent.inference.engine import PagedAttentionEngine


class LocalServer:
    """A uvicorn server for ``app`` on a thread; ``base_url`` ends in ``/v1`` as OpenAI clients expect."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP;
        # without it Nagle + delayed ACK add ~40 ms to every response after the first on a connection.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(2048)
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=f"pyagent-serve:{self.port}", daemon=True)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> LocalServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local server did not start")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread until interrupted (Ctrl-C); what ``pyagent serve`` runs."""
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._sock.close()

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


_servers: dict[str, LocalServer] = {}
_lock = threading.Lock()


def load_engine(model_dir: str | os.PathLike[str], **options: Any) -> PagedAttentionEngine:
    """The engine for ``model_dir``; ``options`` go to ``PagedAttentionEngine.from_pretrained``."""
    from pyagent.inference.engine import PagedAttentionEngine

    return PagedAttentionEngine.from_pretrained(Path(model_dir), **options)


def start_local_server(model_dir: str | os.PathLike[str], *, store: str | None = None) -> str:
    """Serve the model in ``model_dir`` in-process (once per directory) and return its base URL.

    The store defaults to an in-memory SQLite database: an agent's calls need no history on disk.
    """
    key = os.path.abspath(model_dir)
    with _lock:
        server = _servers.get(key)
        if server is None:
            backend = Backend(load_engine(model_dir))
            app = create_app(backend, ResponseStore(store or ":memory:"))
            server = _servers[key] = LocalServer(app).start()
        return server.base_url
