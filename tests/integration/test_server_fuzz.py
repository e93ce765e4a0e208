"""Property-based fuzzing (schemathesis) of the OpenAPI schema the server publishes: whatever a client
sends, the server answers without a 5xx, and every error carries an OpenAI-style body.

Real uvicorn on 127.0.0.1 and the real engine on a tiny ``init_tiny`` model whose context is 128 tokens,
so that any generation the fuzzer asks for is short. Bounded: a few dozen examples per operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from pyagent.inference.tiny import init_tiny
from pyagent.server import Backend, LocalServer, ResponseStore, create_app
from pyagent.server.local import load_engine


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, list[str]]]:
    root = tmp_path_factory.mktemp("fuzz")
    engine = load_engine(init_tiny(root / "tiny", max_position_embeddings=128))
    store = ResponseStore(root / "responses.db", max_responses=200)
    with LocalServer(create_app(Backend(engine), store)) as server:
        base = server.base_url.removesuffix("/v1")
        import openai

        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        known = [client.responses.create(model="tiny", input=f"seed {i}", max_output_tokens=4).id for i in range(4)]
        yield schemathesis.openapi.from_url(base + "/openapi.json"), base, known
    store.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_server_errors(fuzz_target: tuple[Any, str, list[str]], mode: GenerationMode) -> None:
    schema, base, known = fuzz_target
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/responses", "/v1/responses/{response_id}", "/v1/chat/completions"}
    for op in operations:
        constrained = len(op.body) or any(p.location == "query" for p in op.iter_parameters())
        if mode is GenerationMode.NEGATIVE and not constrained:
            continue  # only free-form path strings (or nothing): no request can violate the schema

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case: Any) -> None:
            if mode is GenerationMode.POSITIVE:
                _aim_at_real_things(case, known)
            response = case.call(base_url=base, timeout=60)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
            if response.status_code >= 400:
                error = response.json()["error"]
                assert isinstance(error["message"], str) and error["message"], response.text

        check()


def _aim_at_real_things(case: Any, known: list[str]) -> None:
    """Valid requests should mostly reach the engine and the store, not stop at "unknown model/id"."""
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = "tiny"
    rid = (case.path_parameters or {}).get("response_id")
    if isinstance(rid, str) and len(rid) % 3 != 0:
        case.path_parameters["response_id"] = known[len(rid) % len(known)]
