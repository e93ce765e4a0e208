"""``improve --llm local:...``: the agents' LLM client on PyAgent's own server and engine (tiny model)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pyagent.agents.llm.factory import LLMConfigError, make_llm
from pyagent.cli.local_llm import local_llm
from pyagent.inference.tiny import init_tiny
from pyagent.model.budget import Budget
from pyagent.server import Backend, LocalServer, ResponseStore, create_app
from pyagent.server.local import load_engine

MSGS = [{"role": "system", "content": "You refactor Python."}, {"role": "user", "content": "def f(): pass"}]


def test_local_model_directory(tmp_path: Path) -> None:
    model_dir = init_tiny(tmp_path / "coder")
    budget = Budget(tokens=10_000)
    client = make_llm(f"local:{model_dir}", budget=budget, local=local_llm)
    assert client.model == "coder"
    reply = asyncio.run(client.complete(MSGS, max_tokens=5))
    assert reply.output_tokens == 5 and reply.input_tokens > 0
    assert budget.used()["tokens"] == reply.input_tokens + 5
    assert client.meter.totals()["calls"] == 1


def test_local_server_url_with_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = load_engine(init_tiny(tmp_path / "served"))
    app = create_app(Backend(engine), ResponseStore(":memory:"), api_keys=("k-123",))
    with LocalServer(app) as server:
        monkeypatch.setenv("PYAGENT_API_KEY", "k-123")
        client = make_llm(f"local:{server.base_url}", local=local_llm)
        assert client.model == "served"
        assert asyncio.run(client.complete(MSGS, max_tokens=3)).output_tokens == 3
        monkeypatch.setenv("PYAGENT_API_KEY", "wrong")
        with pytest.raises(LLMConfigError, match="cannot list the served model"):
            make_llm(f"local:{server.base_url}", local=local_llm)


def test_bad_local_targets_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(LLMConfigError, match="not a model directory"):
        make_llm(f"local:{tmp_path / 'missing'}", local=local_llm)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMConfigError, match="cannot load the model"):
        make_llm(f"local:{tmp_path / 'empty'}", local=local_llm)
    with pytest.raises(LLMConfigError, match="cannot list the served model"):
        make_llm("local:http://127.0.0.1:9/v1", local=local_llm)
