"""A real HTTP server on 127.0.0.1 that speaks the OpenAI Responses and Chat Completions protocols
with SCRIPTED replies. It is a test double of a paid LLM API (which cannot be called from tests);
everything else in these tests (sockets, HTTP, the client, retries, timeouts) is real."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    text: str | None = None  # model output text (wrapped in the protocol's JSON)
    raw: bytes | None = None  # exact body instead
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    input_tokens: int = 100
    output_tokens: int = 50


@dataclass
class Script:
    replies: list[Reply]
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths_404: tuple[str, ...] = ()


def _body(path: str, reply: Reply) -> bytes:
    if reply.raw is not None:
        return reply.raw
    if path.endswith("/responses"):
        return json.dumps(
            {
                "id": "resp_1",
                "object": "response",
                "status": "completed",
                "output": [
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": reply.text}],
                    }
                ],
                "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
            }
        ).encode()
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens},
        }
    ).encode()


@contextmanager
def scripted_server(script: Script) -> Iterator[str]:
    """Serve ``script`` on an ephemeral loopback port; yields the base URL (``http://127.0.0.1:N/v1``)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            payload = json.loads(self.rfile.read(length) or b"{}")
            with lock:
                script.requests.append({"path": self.path, "headers": dict(self.headers), "json": payload})
                if self.path in script.paths_404:
                    reply = Reply(status=404, raw=b'{"error": "not found"}')
                elif script.replies:
                    reply = script.replies.pop(0)
                else:
                    reply = Reply(status=500, raw=b'{"error": "script exhausted"}')
            if reply.delay:
                time.sleep(reply.delay)
            body = _body(self.path, reply)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
